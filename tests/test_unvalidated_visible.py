"""``--allow-unvalidated`` is visible to every client of a real server on a real tiny run: V2 model metadata and
config parameters, ``/v1/model`` (which the page reads) and the page's warning banner."""

from __future__ import annotations

import httpx

from tests.serving_helpers import failed_gate_copy, running_server


def _views(url):
    meta = httpx.get(f"{url}/v2/models/served").json()["parameters"]
    config = {k: v["string_value"] for k, v in httpx.get(f"{url}/v2/models/served/config").json()["parameters"].items()}
    info = httpx.get(f"{url}/v1/model").json()
    return meta, config, info


def test_unvalidated_artifact_served_with_the_flag_says_so_everywhere(served_run, tmp_path):
    with running_server(failed_gate_copy(served_run, tmp_path), allow_unvalidated=True) as (url, _):
        meta, config, info = _views(url)
        assert meta["allow_unvalidated"] is True and meta["validated"] is False
        assert "failed its validation gate" in meta["validation_warning"]
        assert (config["allow_unvalidated"], config["validated"]) == ("true", "false")
        assert config["validation_warning"] == meta["validation_warning"]
        assert info["allow_unvalidated"] is True and info["validated"] is False
        assert any("failed its validation gate" in w for w in info["warnings"])
        page = httpx.get(f"{url}/").text
        assert '<div id="unvalidated" role="alert" hidden></div>' in page  # the banner page.js fills
        js = httpx.get(f"{url}/ui/page.js").text
        assert "showValidation(info)" in js and "did NOT pass validation" in js


def test_validated_run_with_and_without_the_flag(served_run):
    with running_server(served_run) as (url, _):
        meta, config, info = _views(url)
        assert meta == {"allow_unvalidated": False, "validated": True, "validation_warning": ""}
        assert (config["allow_unvalidated"], config["validated"]) == ("false", "true")
        assert (info["allow_unvalidated"], info["validated"], info["warnings"]) == (False, True, [])
    with running_server(served_run, allow_unvalidated=True) as (url, _):
        meta, _, info = _views(url)
        assert (meta["allow_unvalidated"], meta["validated"]) == (True, True)  # the flag shows even when unused
        assert (info["allow_unvalidated"], info["validated"]) == (True, True)
