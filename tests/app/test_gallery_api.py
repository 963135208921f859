"""The gallery API: listing with keyset pagination, label changes, label filters inside the search, several queries."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.testing import image_bytes
from tests.app.conftest import AUTH, upload
from tests.app.test_images import add


def test_list_pages_through_the_gallery_by_keyset_and_filters(client: TestClient) -> None:
    ids = [add(client, s, label="cat" if s % 3 == 0 else "dog") for s in range(8)]  # sources upload:0.png .. upload:7.png
    seen, after, pages = [], 0, 0
    while True:
        r = client.get(f"/images?limit=3&after={after}")
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [m["id"] for m in page["images"]]
        pages += 1
        if page["next_after"] is None:
            break
        after = page["next_after"]
        if pages == 1:  # a delete between pages skips nothing else
            client.delete(f"/images/{ids[-1]}", headers=AUTH)
    assert seen == ids[:-1] and pages == 3
    cats = client.get("/images?label=cat").json()["images"]
    assert [m["id"] for m in cats] == [ids[0], ids[3], ids[6]] and {m["label"] for m in cats} == {"cat"}
    assert [m["source"] for m in client.get("/images?source=upload:5").json()["images"]] == ["upload:5.png"]
    assert client.get("/images?source=UPLOAD:5").json()["images"] == []  # exact, case-sensitive prefix
    assert client.get("/images?limit=0").status_code == 422 and client.get("/images?after=-1").status_code == 422
    meta = client.get(f"/images/{ids[0]}/meta").json()
    assert isinstance(meta["created_at"], float) and "created" not in meta  # one type per field name


def test_patch_changes_the_label_with_the_key(client: TestClient) -> None:
    image_id = add(client, 1, label="old")
    assert client.patch(f"/images/{image_id}", json={"label": "new"}).status_code == 401
    r = client.patch(f"/images/{image_id}", json={"label": "new"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["label"] == "new"
    assert client.get(f"/images/{image_id}/meta").json()["label"] == "new"
    assert client.patch(f"/images/{image_id}", json={"label": "x" * 201}, headers=AUTH).status_code == 422
    assert client.patch("/images/999999", json={"label": "a"}, headers=AUTH).status_code == 404
    assert client.patch(f"/images/{image_id}", json={"label": None}, headers=AUTH).json()["label"] is None


def test_label_filters_apply_inside_the_search(client: TestClient) -> None:
    rare = [add(client, s, label="rare") for s in range(3)]
    common = [add(client, s, label="common") for s in range(10, 22)]
    query = common[0]
    # the query's nearest images are the common ones; filtering after a plain top-3 would return fewer than 3
    r = client.get(f"/similar/{query}?k=3&label=rare")
    assert r.status_code == 200, r.text
    assert sorted(h["id"] for h in r.json()["results"]) == rare
    hits = client.get(f"/similar/{query}?k=20&exclude_label=rare").json()["results"]
    assert {h["label"] for h in hits} == {"common"} and len(hits) == 11  # every common image but the query itself
    both = client.get(f"/similar/{query}?k=20&label=rare&label=common&exclude_label=common").json()["results"]
    assert sorted(h["id"] for h in both) == rare
    assert client.get(f"/similar/{query}?k=5&label=nobody").json()["count"] == 0
    client.patch(f"/images/{common[1]}", json={"label": "rare"}, headers=AUTH)  # a label change reaches the filter at once
    assert sorted(h["id"] for h in client.get(f"/similar/{query}?k=10&label=rare").json()["results"]) == sorted([*rare, common[1]])
    r = client.post("/similar?k=2&label=rare", files=upload("q.png", image_bytes(15)))
    assert r.status_code == 200 and {h["label"] for h in r.json()["results"]} == {"rare"}
    schema = client.get("/openapi.json").json()["paths"]["/similar/{image_id}"]["get"]["parameters"]
    assert {"label", "exclude_label", "k", "min_score"} <= {p["name"] for p in schema}


def test_similar_takes_several_query_files(client: TestClient) -> None:
    for s in range(4):
        add(client, s, label=f"L{s}")
    files = [("files", ("a.png", image_bytes(1), "image/png")), ("files", ("b.png", image_bytes(3), "image/png"))]
    r = client.post("/similar?k=2", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [q["filename"] for q in body["queries"]] == ["a.png", "b.png"]
    assert [q["results"][0]["label"] for q in body["queries"]] == ["L1", "L3"]
    assert body["results"] == body["queries"][0]["results"] and all(len(q["predictions"]) == 4 for q in body["queries"])
