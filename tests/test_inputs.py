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


def _inventory(**transport):
    return ClusterInventory(name="c1", nodes=[{"name": "n1", "address": "10.0.0.5"},
                                               {"name": "n2", "address": "10.0.0.6"}],
                            transport=Transport(**transport), credential=CredentialRef(username="u", password_env="P"))


def test_options_naming_a_node_the_inventory_lacks_are_refused_with_the_field():
    for options, field in ((RunOptions(NodeOrder=["n2", "n7"]), "NodeOrder: 'n7'"),
                           (RunOptions(restart_only=["N1", "n9"]), "restart_only: 'n9'")):
        with pytest.raises(InputError) as caught:
            options.check_against(_inventory())
        assert field in str(caught.value) and "n1, n2" in str(caught.value)
    RunOptions(NodeOrder=["N2"], restart_only=["n1"]).check_against(_inventory())  # case does not matter


def test_a_negative_stop_after_or_warn_after_is_refused():
    for field in ("StopAfter", "WarnAfter"):
        with pytest.raises(ValidationError, match="must be positive"):
            RunOptions(**{field: "-01:00:00"})


def test_an_options_file_that_is_not_yaml_names_the_file(tmp_path):
    from hciupgrade.models import load_options

    path = tmp_path / "opts.yaml"
    path.write_text("MaxFailedNodes: [1\n")
    with pytest.raises(InputError, match=f"{path}: not valid YAML"):
        load_options(path)
    path.write_text("- MaxFailedNodes\n")
    with pytest.raises(InputError, match="a mapping of names"):
        load_options(path)


def test_the_setup_media_path_follows_the_strict_path_rule():
    for bad in (r"\\server\share\media", r"C:\media;Stop-Computer", r"C:\media\..\Windows", "C:/media", "media"):
        with pytest.raises(ValidationError, match="PathToSetupMedia|setup_path"):
            RunOptions(PathToSetupMedia=bad)
    assert RunOptions(PathToSetupMedia=r"D:\Media (23H2)\Extracted").setup_path.startswith("D:")


def test_a_one_node_cluster_is_refused_and_told_why():
    with pytest.raises(ValidationError) as caught:
        ClusterInventory(name="c1", nodes=[{"name": "n1", "address": "a"}],
                         credential=CredentialRef(username="u", password_env="P"))
    assert "no rolling path" in str(caught.value)


def test_https_without_certificate_validation_to_a_real_node_warns_naming_the_node():
    assert _inventory().warnings() == []
    warnings = _inventory(cert_validation=False).warnings()
    assert len(warnings) == 2 and "n1 (10.0.0.5)" in warnings[0] and "certificate validation is off" in warnings[0]


def test_a_readiness_file_cut_short_names_its_real_line(tmp_path):
    from hciupgrade.readiness.results import read_file

    path = tmp_path / "cut.json"
    path.write_text('\n\n[\n  {"Name": "AzStackHci_Upgrade_Check",\n   "Status": "SUCCESS",\n   "Sev')
    rows, problems = read_file(path)
    assert rows == [] and "line 6" in str(problems[0]) and "cut short" in str(problems[0])
