"""The command line: generate-registration, migrate, refusing placeholder tokens."""

import re

import yaml

from harness import Service
from harness.service import EXAMPLE_CONFIG
from harness.synapse import Synapse


def make_service(tmp_path) -> Service:
    # Synapse is only named (its URL goes into the config); it is never started here.
    return Service(tmp_path / "service", Synapse(tmp_path / "synapse"))


def test_generate_registration_matches_config(tmp_path):
    svc = make_service(tmp_path)
    reg, asv = svc.generated_registration, svc.config["appservice"]
    assert reg["id"] == asv["id"]
    assert reg["url"] == asv["address"]
    assert reg["as_token"] == asv["as_token"] and reg["hs_token"] == asv["hs_token"]
    assert reg["as_token"] != reg["hs_token"]
    placeholder = yaml.safe_load(EXAMPLE_CONFIG.read_text())["appservice"]["as_token"]
    for token in (reg["as_token"], reg["hs_token"]):
        assert token != placeholder and len(token) >= 32, token
    # A sender nobody sees, so that the bot (a user of the namespace) may /sync.
    assert reg["sender_localpart"] == asv["sender_localpart"] != asv["bot"]["username"] == "visio"
    assert re.fullmatch(r"_tv_[a-z0-9]{12}", reg["sender_localpart"]), reg["sender_localpart"]
    assert len(svc.config["encryption"]["passphrase"]) >= 32
    assert "org.matrix.msc3202" not in reg, "only encryption.to_device: transactions asks for it"
    assert reg["rate_limited"] is False
    assert reg["io.element.msc4190"] is True
    assert reg["receive_ephemeral"] is True

    users = reg["namespaces"]["users"]
    assert all(ns["exclusive"] for ns in users), users

    def claimed(user_id):
        return any(re.fullmatch(ns["regex"], user_id) for ns in users)

    assert claimed("@visio:localhost")
    assert claimed("@visio_abc123:localhost")
    assert not claimed("@alice:localhost")
    assert not claimed("@visio_abc:elsewhere.example")


def test_generate_registration_tokens_differ_between_services(tmp_path):
    a, b = make_service(tmp_path / "a"), make_service(tmp_path / "b")
    assert a.as_token != b.as_token and a.hs_token != b.hs_token


def test_migrate_is_idempotent(tmp_path):
    svc = make_service(tmp_path)
    for attempt in (1, 2):
        r = svc.cli("migrate", "-c", str(svc.config_path))
        assert r.returncode == 0, f"migrate #{attempt}: {r.stdout}"
    assert (svc.dir / "tchap-visio.db").is_file()


def test_placeholder_tokens_stop_the_start(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(EXAMPLE_CONFIG.read_text())
    svc = make_service(tmp_path)  # only for its binary
    r = svc.cli("run", "-c", str(config), timeout=30)
    assert r.returncode != 0, r.stdout
    assert "registration" in r.stdout.lower(), f"no hint to generate the registration: {r.stdout}"


def test_generate_registration_quiet_prints_nothing(tmp_path):
    svc = make_service(tmp_path)
    reg = tmp_path / "quiet-registration.yaml"
    r = svc.cli("generate-registration", "--quiet", "--force", "-c", str(svc.config_path), "-r", str(reg))
    assert r.returncode == 0, r.stdout
    assert r.stdout == "", f"--quiet printed: {r.stdout!r}"
    written = yaml.safe_load(reg.read_text())
    assert written["as_token"] == yaml.safe_load(svc.config_path.read_text())["appservice"]["as_token"]
