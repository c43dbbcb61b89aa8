"""``ipamd.invoke.conflist``: a conflist exec'd as containerd does it, against fake plugins written to tmp_path."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from cni.errors import AddressConflict, CniError, InvalidConfig, IOFailure
from ipamd.invoke.conflist import PodIdentity, Runtime, find_conflist, load_conflist
from ipamd.model.objects import POD_ANNOTATIONS_CAPABILITY, SPEC_ANNOTATION

# Records what it was given (env, stdin) as one JSON line in $log, then acts on its config:
#   ADD: append an interface named after its type to prevResult (or fail with "failOn": "ADD")
#   DEL/CHECK: print nothing (or fail)
FAKE_PLUGIN = """\
#!{python}
import json, os, sys
raw = sys.stdin.read()
conf = json.loads(raw)
verb = os.environ.get("CNI_COMMAND", "")
with open(conf["log"], "a", encoding="utf-8") as fh:
    fh.write(json.dumps({{"plugin": os.path.basename(sys.argv[0]), "verb": verb, "conf": conf,
                         "env": dict(os.environ)}}) + "\\n")
if verb in conf.get("failOn", []):
    if "failWith" in conf:
        print(json.dumps(conf["failWith"]))
        sys.exit(1)
    if conf.get("garbage"):
        sys.stderr.write("segfault or so\\n")
        sys.exit(2)
    print(json.dumps({{"cniVersion": conf["cniVersion"], "code": 104, "msg": "boom", "details": verb}}))
    sys.exit(1)
if verb == "ADD":
    prev = conf.get("prevResult") or {{"cniVersion": conf["cniVersion"], "interfaces": [], "ips": [], "dns": {{}}}}
    n = len(prev["interfaces"])
    prev["interfaces"].append({{"name": os.path.basename(sys.argv[0])}})
    prev["ips"].append({{"address": "198.18.0.%d/24" % (n + 10), "interface": n}})
    print(json.dumps(prev))
"""


@pytest.fixture()
def cni_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = FAKE_PLUGIN.format(python=sys.executable)
    for name in ("first", "second", "third"):
        path = bin_dir / name
        path.write_text(script)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    (bin_dir / "not-executable").write_text(script)
    return bin_dir


@pytest.fixture()
def log(tmp_path: Path) -> Path:
    return tmp_path / "calls.jsonl"


@pytest.fixture()
def runtime(cni_bin: Path, tmp_path: Path) -> Runtime:
    return Runtime(cni_path=str(cni_bin), cache_dir=str(tmp_path / "cache"), timeout=30)


@pytest.fixture()
def pod(tmp_path: Path) -> PodIdentity:
    netns = tmp_path / "netns"
    netns.write_text("")
    return PodIdentity(namespace="ns", name="pod-a", uid="uid-1", container_id="c0ffee", netns=str(netns),
                       ifname="eth0", annotations={SPEC_ANNOTATION: '[{"type": "Network", "name": "n"}]', "x": "y"})


def conflist(log: Path, *plugins: dict[str, Any], version: str = "1.0.0") -> dict[str, Any]:
    return {"cniVersion": version, "name": "testnet",
            "plugins": [{"log": str(log), **p} for p in plugins]}


def calls(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_add_runs_plugins_in_order_chaining_prev_result(runtime: Runtime, pod: PodIdentity, log: Path) -> None:
    cl = conflist(log, {"type": "first"}, {"type": "second"}, {"type": "third"})
    result = runtime.add(cl, pod)
    made = calls(log)
    assert [(c["plugin"], c["verb"]) for c in made] == [("first", "ADD"), ("second", "ADD"), ("third", "ADD")]
    assert "prevResult" not in made[0]["conf"]
    assert made[1]["conf"]["prevResult"]["interfaces"] == [{"name": "first"}]
    assert made[2]["conf"]["prevResult"]["interfaces"] == [{"name": "first"}, {"name": "second"}]
    assert [i["name"] for i in result["interfaces"]] == ["first", "second", "third"]
    assert [ip["interface"] for ip in result["ips"]] == [0, 1, 2]


def test_each_plugin_gets_the_lists_name_and_version(runtime: Runtime, pod: PodIdentity, log: Path) -> None:
    cl = conflist(log, {"type": "first", "name": "ignored", "cniVersion": "0.3.1", "extra": {"k": 1}},
                  version="0.4.0")
    runtime.add(cl, pod)
    (call,) = calls(log)
    assert call["conf"]["name"] == "testnet"
    assert call["conf"]["cniVersion"] == "0.4.0"
    assert call["conf"]["type"] == "first"
    assert call["conf"]["extra"] == {"k": 1}


def test_pod_annotations_only_with_the_capability(runtime: Runtime, pod: PodIdentity, log: Path) -> None:
    cl = conflist(log,
                  {"type": "first"},
                  {"type": "second", "capabilities": {POD_ANNOTATIONS_CAPABILITY: True, "portMappings": True}},
                  {"type": "third", "capabilities": {POD_ANNOTATIONS_CAPABILITY: False}})
    runtime.add(cl, pod)
    first, second, third = (c["conf"] for c in calls(log))
    assert "runtimeConfig" not in first
    assert second["runtimeConfig"] == {POD_ANNOTATIONS_CAPABILITY: pod.annotations}
    assert "runtimeConfig" not in third
    assert all("capabilities" not in c for c in (first, second, third))


def test_no_annotations_no_runtime_config(runtime: Runtime, pod: PodIdentity, log: Path) -> None:
    bare = PodIdentity(pod.namespace, pod.name, pod.uid, pod.container_id, pod.netns)
    runtime.add(conflist(log, {"type": "first", "capabilities": {POD_ANNOTATIONS_CAPABILITY: True}}), bare)
    (call,) = calls(log)
    assert "runtimeConfig" not in call["conf"]


def test_environment_of_each_plugin(runtime: Runtime, pod: PodIdentity, log: Path, cni_bin: Path) -> None:
    runtime.add(conflist(log, {"type": "first"}), pod)
    (call,) = calls(log)
    env = call["env"]
    assert env["CNI_COMMAND"] == "ADD"
    assert env["CNI_CONTAINERID"] == "c0ffee"
    assert env["CNI_NETNS"] == pod.netns
    assert env["CNI_IFNAME"] == "eth0"
    assert env["CNI_PATH"] == str(cni_bin)
    args = dict(kv.split("=", 1) for kv in env["CNI_ARGS"].split(";"))
    assert args == {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "ns", "K8S_POD_NAME": "pod-a",
                    "K8S_POD_INFRA_CONTAINER_ID": "c0ffee", "K8S_POD_UID": "uid-1"}


def test_add_caches_the_result_and_del_uses_it_in_reverse(runtime: Runtime, pod: PodIdentity, log: Path,
                                                          tmp_path: Path) -> None:
    cl = conflist(log, {"type": "first"}, {"type": "second"})
    result = runtime.add(cl, pod)
    cache = tmp_path / "cache" / "testnet-c0ffee-eth0.json"
    assert json.loads(cache.read_text()) == result
    log.unlink()

    assert runtime.delete(cl, pod) == []
    made = calls(log)
    assert [(c["plugin"], c["verb"]) for c in made] == [("second", "DEL"), ("first", "DEL")]
    assert all(c["conf"]["prevResult"] == result for c in made)
    assert all(c["env"]["CNI_NETNS"] == pod.netns for c in made)
    assert not cache.exists()


def test_del_without_a_cached_result_has_no_prev_result(runtime: Runtime, pod: PodIdentity, log: Path) -> None:
    assert runtime.delete(conflist(log, {"type": "first"}), pod) == []
    (call,) = calls(log)
    assert "prevResult" not in call["conf"]


def test_del_of_a_gone_netns_passes_an_empty_netns(runtime: Runtime, pod: PodIdentity, log: Path) -> None:
    cl = conflist(log, {"type": "first"})
    runtime.add(cl, pod)
    os.unlink(pod.netns)
    runtime.delete(cl, pod)
    assert calls(log)[-1]["env"]["CNI_NETNS"] == ""


def test_failing_add_is_followed_by_a_del(runtime: Runtime, pod: PodIdentity, log: Path, tmp_path: Path) -> None:
    cl = conflist(log, {"type": "first"}, {"type": "second", "failOn": ["ADD"]}, {"type": "third"})
    with pytest.raises(AddressConflict) as info:
        runtime.add(cl, pod)
    assert info.value.code == 104 and info.value.msg == "boom"
    made = calls(log)
    assert [(c["plugin"], c["verb"]) for c in made] == [
        ("first", "ADD"), ("second", "ADD"), ("third", "DEL"), ("second", "DEL"), ("first", "DEL")]
    first_result = json.loads(json.dumps(made[1]["conf"]["prevResult"]))
    assert [c["conf"]["prevResult"] for c in made[2:]] == [first_result] * 3
    assert not (tmp_path / "cache" / "testnet-c0ffee-eth0.json").exists()


def test_del_goes_on_past_failures(runtime: Runtime, pod: PodIdentity, log: Path, tmp_path: Path) -> None:
    cl = conflist(log, {"type": "first"}, {"type": "second", "failOn": ["DEL"]})
    runtime.add(cl, pod)
    errors = runtime.delete(cl, pod)
    assert len(errors) == 1 and errors[0].startswith("second: ")
    assert [c["plugin"] for c in calls(log) if c["verb"] == "DEL"] == ["second", "first"]
    assert (tmp_path / "cache" / "testnet-c0ffee-eth0.json").exists()  # kept for the next try


def test_plugin_failing_without_a_cni_error(runtime: Runtime, pod: PodIdentity, log: Path) -> None:
    cl = conflist(log, {"type": "first", "failOn": ["ADD"], "garbage": True})
    with pytest.raises(IOFailure) as info:
        runtime.add(cl, pod)
    assert "exit 2" in info.value.msg
    assert "segfault" in info.value.details


@pytest.mark.parametrize("printed", [None, "oops", [1, 2], 42])
def test_plugin_failing_with_json_that_is_no_error_object(runtime: Runtime, pod: PodIdentity, log: Path,
                                                          printed: Any) -> None:
    """Still a CNI error (and the DEL that follows a failed ADD), not a stray AttributeError."""
    cl = conflist(log, {"type": "first"}, {"type": "second", "failOn": ["ADD"], "failWith": printed})
    with pytest.raises(CniError) as info:
        runtime.add(cl, pod)
    assert info.value.code == 5
    assert [(c["plugin"], c["verb"]) for c in calls(log)][-2:] == [("second", "DEL"), ("first", "DEL")]


@pytest.mark.parametrize("plugin", ["missing", "not-executable"])
def test_plugin_not_found(runtime: Runtime, pod: PodIdentity, log: Path, plugin: str) -> None:
    with pytest.raises(IOFailure) as info:
        runtime.add(conflist(log, {"type": plugin}), pod)
    assert info.value.code == 5


def test_plugin_printing_non_json(tmp_path: Path, pod: PodIdentity, log: Path) -> None:
    bin_dir = tmp_path / "other-bin"
    bin_dir.mkdir()
    script = bin_dir / "chatty"
    script.write_text(f"#!{sys.executable}\nprint('hello, I am not JSON')\n")
    script.chmod(0o755)
    rt = Runtime(cni_path=str(bin_dir), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(IOFailure) as info:
        rt.add(conflist(log, {"type": "chatty"}), pod)
    assert "not JSON" in info.value.msg


def test_plugin_timeout(tmp_path: Path, pod: PodIdentity, log: Path) -> None:
    bin_dir = tmp_path / "slow-bin"
    bin_dir.mkdir()
    script = bin_dir / "slow"
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(10)\n")
    script.chmod(0o755)
    rt = Runtime(cni_path=str(bin_dir), cache_dir=str(tmp_path / "cache"), timeout=0.3)
    with pytest.raises(CniError) as info:
        rt.add(conflist(log, {"type": "slow"}), pod)
    assert info.value.code == 5
    assert "timed out" in info.value.msg


# -- configuration files --------------------------------------------------------------------------

def test_find_conflist_takes_the_first_file_in_lexical_order(tmp_path: Path) -> None:
    for name in ("20-b.conflist", "10-a.conf", "05-ignored.txt", "99-z.json"):
        (tmp_path / name).write_text("{}")
    assert find_conflist(str(tmp_path)) == str(tmp_path / "10-a.conf")


def test_find_conflist_in_an_empty_or_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig):
        find_conflist(str(tmp_path))
    with pytest.raises(InvalidConfig):
        find_conflist(str(tmp_path / "missing"))


def test_load_conflist(tmp_path: Path) -> None:
    path = tmp_path / "10-plexus.conflist"
    data = {"cniVersion": "1.1.0", "name": "plexus", "plugins": [{"type": "plexus"}]}
    path.write_text(json.dumps(data))
    assert load_conflist(str(path)) == data


def test_load_single_plugin_conf_wraps_it(tmp_path: Path) -> None:
    path = tmp_path / "10-plexus.conf"
    single = {"cniVersion": "0.4.0", "name": "plexus", "type": "plexus", "socket": "/run/plexus/plexus.sock"}
    path.write_text(json.dumps(single))
    assert load_conflist(str(path)) == {"cniVersion": "0.4.0", "name": "plexus", "plugins": [single]}


@pytest.mark.parametrize("text", ["{not json", '{"cniVersion": "1.0.0", "name": "x", "plugins": []}',
                                  '{"cniVersion": "1.0.0", "name": "x", "plugins": {"type": "p"}}'])
def test_load_bad_conflist(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.conflist"
    path.write_text(text)
    with pytest.raises(InvalidConfig):
        load_conflist(str(path))


def test_load_missing_conflist(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig):
        load_conflist(str(tmp_path / "none.conflist"))


def test_shipped_conflist_declares_the_annotations_capability() -> None:
    shipped = Path(__file__).resolve().parents[2] / "packaging" / "10-plexus.conflist"
    conf = load_conflist(str(shipped))
    (plugin,) = conf["plugins"]
    assert plugin["type"] == "plexus"
    assert plugin["capabilities"][POD_ANNOTATIONS_CAPABILITY] is True
