"""What answers may say about where the service keeps things: nothing.

Error bodies and ``/readyz`` need no authentication, so they must not show the store's location (a
database's host, port, user, name, or its password in any form), nor the directories of the index and the
weights. Messages raised below the routes name all of these, as the log should; ``Scrubber`` takes them
out of every text that leaves in an answer, keeping file names (``w.safetensors``, ``store.sqlite``) so
that an operator still learns which file is at fault. The log keeps the details, with passwords redacted
(``index.store.redact_url``, applied to every log line by ``app.observe``).
"""

from __future__ import annotations

import re

from app.settings import Settings
from index.store import redact_url

__all__ = ["Scrubber"]


class Scrubber:
    """Takes the configured locations out of texts; built once from the settings."""

    def __init__(self, settings: Settings) -> None:
        words: dict[str, str] = {}
        for path, what in ((settings.index_dir, "<index dir>"), (settings.weights.parent, "<weights dir>")):
            for form in {str(path), str(path.resolve())}:
                if form not in (".", "/", ""):
                    words[form.rstrip("/")] = what
        if settings.store_url is not None:
            words.update(_database_words(settings.store_url.get_secret_value()))
        # longest first, so that a path is replaced before a shorter part of it
        ordered = sorted(words, key=len, reverse=True)
        self._words = words
        self._pattern = re.compile("|".join(_word(w) for w in ordered)) if ordered else None

    def __call__(self, text: str) -> str:
        text = redact_url(text)
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self._words[m.group(0)], text)


def _word(value: str) -> str:
    """A regex for ``value`` standing alone (not inside a longer word: a user "postgres" in "postgresql")."""
    left = r"(?<![\w.-])" if value[:1].isalnum() else ""
    right = r"(?![\w-])" if value[-1:].isalnum() else ""
    return f"{left}{re.escape(value)}{right}"


def _database_words(url: str) -> dict[str, str]:
    """The parts of a libpq connection string that locate or open the database, each with its stand-in."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(url)
    except Exception:  # unparseable: the whole string is all that can be hidden
        return {url: "<database>"}
    words = {url: "<database>", redact_url(url): "<database>"}
    for key, what in (
        ("host", "<host>"), ("hostaddr", "<host>"), ("port", "<port>"), ("user", "<user>"), ("dbname", "<database>"), ("password", "***"),
    ):  # fmt: skip
        for value in str(parts.get(key) or "").split(","):  # (libpq takes several hosts, comma-separated)
            if len(value) >= 2:
                words[value] = what
    return words
