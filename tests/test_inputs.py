"""Bad input is refused before anything runs, with a message naming the field, the value and the fix."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hciupgrade.models import (
    ClusterInventory,
    CredentialRef,
    InputError,
    RunOptions,
    Transport,
    load_inventory,
)
from hciupgrade.sim.scenario import ScenarioError, parse_scenario


def test_basic_over_http_to_a_real_node_is_refused():
    with pytest.raises(ValidationError) as caught:
        ClusterInventory(name="c1", nodes=[{"name": "n1", "address": "10.0.0.5"}, {"name": "n2", "address": "n2"}],
                         transport=Transport(scheme="http", auth="basic"),
                         credential=CredentialRef(username="u", password_env="P"))
    assert "clear text" in str(caught.value) and "10.0.0.5" in str(caught.value)


def test_the_default_transport_is_https_with_negotiate():
    t = Transport()
    assert (t.scheme, t.auth, t.cert_validation) == ("https", "negotiate", True)


def test_read_timeout_must_exceed_the_operation_timeout():
    with pytest.raises(ValidationError, match="read_timeout"):
        Transport(operation_timeout=30, read_timeout=20)


def test_a_credential_names_one_source_never_the_secret():
    with pytest.raises(ValidationError, match="exactly one"):
        CredentialRef(username="u")
    with pytest.raises(ValidationError):
        CredentialRef(username="u", password="hunter2")  # no such field: secrets do not live in inventories


def test_an_inventory_typo_names_the_field(tmp_path):
    path = tmp_path / "inv.yaml"
    path.write_text("clusters:\n- name: c1\n  nodes: [{name: n1, address: a}, {name: n2, adress: b}]\n"
                    "  credential: {username: u, password_env: P}\n")
    with pytest.raises(InputError) as caught:
        load_inventory(path)
    assert "clusters.0.nodes.1.adress" in str(caught.value)


def test_a_scenario_typo_names_the_field_and_the_value():
    with pytest.raises(ScenarioError) as caught:
        parse_scenario({"cluster": {"nodes": [{"name": "a"}, {"name": "b"}], "volumes": [{"name": "v"}]},
                        "faults": [{"node": "a", "kind": "drain_fail"}]})
    text = str(caught.value)
    assert "faults.0.kind" in text and "'drain_fail'" in text and "drain_fails" in text


def test_a_fault_on_an_unknown_node_is_refused():
    with pytest.raises(ScenarioError, match="faults\\[0\\].node: 'z' is not a node"):
        parse_scenario({"cluster": {"nodes": [{"name": "a"}, {"name": "b"}], "volumes": [{"name": "v"}]},
                        "faults": [{"node": "z", "kind": "no_return"}]})


def test_run_options_refuse_a_duplicate_in_the_node_order():
    with pytest.raises(ValidationError, match="twice"):
        RunOptions(node_order=["n1", "N1"])
