"""cluster.yaml (AWS) and cluster-local.yaml (on-premises): Ray's own checks, offline.

`ray up` does, in order (ray.autoscaler._private.commands._bootstrap_config):
1. `prepare_config`: merge with the provider's defaults.yaml, merge the setup commands,
   check the docker block, fill min/max workers per node type (`local`: build its single
   node type from head_ip/worker_ips). Reads only files in the installed ray package.
2. the provider's `fillout_available_node_types_resources` (AWS: EC2 DescribeInstanceTypes)
3. `validate_config`: ray-schema.json (unknown keys, types, required fields) plus
   head_node_type / min_workers consistency. Offline.
4. the provider's `bootstrap_config` (AWS: IAM roles, key pairs, subnets, security
   groups, all through boto3).
Steps 2 and 4 need AWS credentials and the network, so these tests run 1 and 3 only
(with sockets and boto3 blocked, to prove it). Our node types declare `resources`
explicitly, so skipping step 2 loses nothing the schema needs.
"""

from __future__ import annotations

import copy
import re
import shlex
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
FILES = {"aws": ROOT / "cluster.yaml", "local": ROOT / "cluster-local.yaml"}
# What Ray raises for a bad file: schema errors, its own ValueErrors, cli_logger.abort
# (a click exception), and TypeError where prepare_config computes with a wrong type.
REJECTED = (jsonschema.ValidationError, ValueError, TypeError, click.ClickException)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Any network use or boto3 import in a test is an error."""

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for mod in ("boto3", "botocore"):
        monkeypatch.setitem(sys.modules, mod, None)  # `import boto3` -> ImportError


def load(kind: str) -> dict[str, Any]:
    return yaml.safe_load(FILES[kind].read_text())


def ray_check(config: dict[str, Any]) -> dict[str, Any]:
    """Steps 1 and 3 of `ray up` (see the module docstring); returns the prepared config."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def strings(obj: Any) -> Iterator[str]:
    """Every string (keys and values) in a loaded YAML document."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v)


def ray_start_commands(config: dict[str, Any]) -> list[str]:
    cmds = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    return [c for c in cmds if re.search(r"\bray start\b", c)]


# ---- Ray's own validation -----------------------------------------------------------

@pytest.mark.parametrize("kind", ["aws", "local"])
def test_valid_for_ray(kind):
    prepared = ray_check(load(kind))
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_aws_node_types():
    cfg = ray_check(load("aws"))
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    # The head runs the driver and Tune; no trial may be scheduled there.
    assert head["resources"].get("CPU") == 0 and head["resources"].get("GPU", 0) == 0
    assert head["max_workers"] == 0
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers)
    for t in workers:
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"]
        assert {"InstanceType", "ImageId"} <= set(t["node_config"])


def test_local_provider_shape():
    raw = load("local")
    # The local provider builds its own node type; it aborts if the file declares any.
    assert "available_node_types" not in raw and "head_node_type" not in raw
    assert raw["provider"]["head_ip"] and raw["provider"]["worker_ips"]
    prepared = ray_check(raw)
    assert prepared["max_workers"] == len(raw["provider"]["worker_ips"])


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def mutate(cfg: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            cfg = cfg[p]
        cfg[last] = value
    return mutate


def _delete(path: str) -> Callable[[dict], None]:
    def mutate(cfg: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            cfg = cfg[p]
        del cfg[last]
    return mutate


def _rename(old: str, new: str) -> Callable[[dict], None]:
    def mutate(cfg: dict) -> None:
        cfg[new] = cfg.pop(old)
    return mutate


def _worker_type(cfg: dict) -> str:
    return next(n for n in cfg["available_node_types"] if n != cfg["head_node_type"])


def _on_worker(fn: Callable[[dict], None]) -> Callable[[dict], None]:
    def mutate(cfg: dict) -> None:
        fn(cfg["available_node_types"][_worker_type(cfg)])
    return mutate


# (file, what is broken, how, what Ray's message must mention)
BREAKAGES = [
    ("aws", "typo max_worker", _rename("max_workers", "max_worker"), "'max_worker' was unexpected"),
    ("aws", "typo setup_command", _rename("setup_commands", "setup_command"),
     "'setup_command' was unexpected"),
    ("aws", "max_workers many", _set("max_workers", "many"), "'many' is not of type 'integer'"),
    ("aws", "negative max_workers", _set("max_workers", -1), "less than the minimum"),
    ("aws", "commands not a list", _set("setup_commands", "pip install torch"), "concatenate"),
    ("aws", "auth typo", _set("auth", {"ssh_usr": "ubuntu"}), "'ssh_usr' was unexpected"),
    ("aws", "docker typo", _set("docker.imag", "rayproject/ray"), "'imag' was unexpected"),
    ("aws", "worker without node_config", _on_worker(_delete("node_config")),
     "'node_config' is a required property"),
    ("aws", "worker without resources", _on_worker(_delete("resources")),
     "'resources' is a required property"),
    ("aws", "fractional GPU resource", _on_worker(_set("resources", {"GPU": 0.5})),
     "0.5 is not of type 'integer'"),
    ("aws", "head type unknown", _set("head_node_type", "ray.head.nonexistent"),
     "must be one of `available_node_types`"),
    ("aws", "min_workers over max", _on_worker(_set("min_workers", 99)),
     "sum of `min_workers`"),
    ("aws", "cluster_name not a string", _set("cluster_name", 123), "not of type 'string'"),
    ("aws", "negative idle timeout", _set("idle_timeout_minutes", -5), "less than the minimum"),
    ("local", "typo max_worker", _set("max_worker", 2), "'max_worker' was unexpected"),
    ("local", "max_workers many", _set("max_workers", "many"), "not supported between"),
    ("local", "worker_ips not a list", _set("provider.worker_ips", "10.0.0.11"),
     "is not of type 'array'"),
    ("local", "no head_ip", _delete("provider.head_ip"), "supply a `head_ip`"),
    ("local", "node types declared",
     _set("available_node_types", {"gpu": {"node_config": {}, "resources": {}}}),
     "available_node_types is not supported"),
]


@pytest.mark.parametrize(("kind", "mutate", "message"), [(k, m, msg) for k, _, m, msg in BREAKAGES],
                         ids=[f"{k}-{name}" for k, name, _, _ in BREAKAGES])
def test_broken_copy_is_rejected(kind, mutate, message):
    cfg = load(kind)
    mutate(cfg)
    with pytest.raises(REJECTED) as info:
        ray_check(cfg)
    assert message in str(info.value)


# ---- security -------------------------------------------------------------------------

WORLD = ("0.0.0.0/0", "::/0")


@pytest.mark.parametrize("kind", ["aws", "local"])
def test_nothing_open_to_the_world(kind):
    cfg = load(kind)
    for s in strings(cfg):
        assert not any(w in s for w in WORLD), s
    ingress = cfg["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in ingress:
        assert not rule.get("IpRanges") and not rule.get("Ipv6Ranges"), rule
    # The dashboard (and with it the jobs API) listens on localhost only.
    head_start = " ".join(cfg["head_start_ray_commands"])
    for host in re.findall(r"--dashboard-host[= ](\S+)", head_start):
        assert host in ("127.0.0.1", "localhost", "::1"), host


def test_aws_security_groups_are_ours():
    # A node type without SecurityGroupIds makes `ray up` create a group whose default
    # rules open SSH (22) to 0.0.0.0/0 (ray/autoscaler/_private/aws/config.py,
    # _create_default_ssh_inbound_rules). Every node type must name the group we made.
    cfg = load("aws")
    for name, node_type in cfg["available_node_types"].items():
        groups = node_type["node_config"].get("SecurityGroupIds")
        assert groups and all(g.startswith("sg-") for g in groups), name


def _token_path(cmd: str) -> str:
    m = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+?);?(\s|$)", cmd)
    assert m, f"no RAY_AUTH_TOKEN_PATH in: {cmd}"
    return m.group(1).replace("$HOME", "~").rstrip(";")


@pytest.mark.parametrize("kind", ["aws", "local"])
def test_token_auth_on_every_ray_start(kind):
    cfg = load(kind)
    starts = ray_start_commands(cfg)
    assert len(starts) == 2  # head and worker
    for cmd in starts:
        before = cmd[: re.search(r"\bray start\b", cmd).start()]
        assert re.search(r"\bexport\b[^;&|]*\bRAY_AUTH_MODE=token\b", before), cmd
        # The token comes from a file shipped by file_mounts, never inline.
        path = _token_path(before)
        mounted = {str(Path(remote)) for remote in cfg["file_mounts"]}
        assert str(Path(path).parent) in mounted or path in mounted, (path, mounted)
    for s in strings(cfg):
        assert "RAY_AUTH_MODE=disabled" not in s
        assert not re.search(r"RAY_AUTH_TOKEN=(?!\$)\S", s), "literal token in the file"


# Shapes of secrets that must never be in these files.
SECRET_PATTERNS = {
    "AWS access key id": r"\b(AKIA|ASIA|AROA|AIDA)[0-9A-Z]{16}\b",
    "AWS secret key": r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])",
    "AWS credential key": r"(?i)aws_(secret_access_key|access_key_id|session_token)\s*[:=]",
    "Ray token (hex)": r"\b[0-9a-fA-F]{32,}\b",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "bearer token": r"(?i)bearer\s+[A-Za-z0-9._~+/-]{16,}",
}


def find_secrets(text: str) -> list[str]:
    return [name for name, pat in SECRET_PATTERNS.items() if re.search(pat, text)]


@pytest.mark.parametrize("kind", ["aws", "local"])
def test_no_credentials_in_file(kind):
    text = FILES[kind].read_text()
    assert find_secrets(text) == []
    provider = load(kind)["provider"]
    assert "aws_credentials" not in provider and "gcp_credentials" not in provider


@pytest.mark.parametrize("secret", [
    "AKIA" + "Q" * 16,
    "aws_secret_access_key = x",
    "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCY" + "EXAMPLEKEY",
    "0123456789abcdef" * 4,
    "-----BEGIN OPENSSH " + "PRIVATE KEY-----",
])
def test_secret_finder_finds_secrets(secret):
    assert find_secrets(f"setup_commands:\n  - echo {secret}\n")


# ---- what the nodes run ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["aws", "local"])
def test_setup_installs_matching_ray_and_project(kind):
    cfg = load(kind)
    setup = " ".join(cfg["setup_commands"])
    assert re.search(r"pip install [^;&|]*\btorch\b", setup)
    assert "ucrn-search @ git+https://" in setup
    # Every node must run exactly the Ray version the launcher (this venv) runs.
    pins = re.findall(r"ray\[[a-z,]+\]==([0-9.]+)", setup)
    assert pins and set(pins) == {ray.__version__}
    if kind == "aws":
        assert cfg["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    assert "# EDIT:" in FILES[kind].read_text()


@pytest.mark.parametrize("kind", ["aws", "local"])
def test_start_commands_parse_as_shell(kind):
    for cmd in load(kind)["head_start_ray_commands"] + load(kind)["worker_start_ray_commands"]:
        shlex.split(cmd)  # balanced quotes


def test_aws_data_on_every_node():
    cfg = load("aws")
    assert "/home/ray/data" in cfg["file_mounts"]
