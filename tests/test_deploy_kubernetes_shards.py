"""deploy/kubernetes/shared-logdir-shards.yaml: one pod template, the ordinal is the shard.

Kubernetes expands ``$(VAR)`` in container args from the container's env; the
test does the same for every ordinal and hands the result to gradwatch's own
argument parser, so the manifest is checked against what ``gradwatch watch``
really accepts. (Strict schema validation: tests/test_deploy_kubernetes.py,
which validates every manifest in deploy/kubernetes.)
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import yaml

from gradwatch.cli import build_parser
from gradwatch.daemon.command import config_from_args
from gradwatch.events.shard import Shard

K8S = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"


def manifest(kind: str, name: str = "shared-logdir-shards.yaml") -> dict:
    (found,) = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d["kind"] == kind]
    return found


def config_dir(where: Path) -> str:
    """The ConfigMap as the StatefulSet mounts it (gradwatch.yaml, rules/training.yaml)."""
    data = manifest("ConfigMap", "gradwatch-config.yaml")["data"]
    (where / "rules").mkdir(parents=True)
    (where / "gradwatch.yaml").write_text(data["gradwatch.yaml"])
    (where / "rules" / "training.yaml").write_text(data["training.yaml"])
    return str(where)


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of container args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


def test_every_replica_runs_the_same_template_with_its_ordinal_as_shard(tmp_path, monkeypatch):
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T/B/x")
    sts = manifest("StatefulSet")
    replicas = sts["spec"]["replicas"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    assert int(env["SHARDS"]["value"]) == replicas
    owners: Counter[str] = Counter()
    names = [f"run-{i}" for i in range(300)]
    for ordinal in range(replicas):
        values = {"SHARD_INDEX": str(ordinal), "SHARDS": env["SHARDS"]["value"]}
        mounted = config_dir(tmp_path / str(ordinal))
        argv = [a.replace("/etc/gradwatch", mounted) for a in container["args"]]
        args = build_parser().parse_args(expand(argv, values))
        cfg = config_from_args(args)
        assert cfg.shard == Shard(ordinal, replicas)
        owners.update(n for n in names if cfg.shard.owns(n))
    assert sorted(owners) == sorted(names) and set(owners.values()) == {1}


def test_each_replica_has_its_own_state_and_reads_the_logdir_read_only():
    sts = manifest("StatefulSet")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    args = container["args"]
    assert mounts[claim["metadata"]["name"]]["mountPath"] == args[args.index("--state-dir") + 1]
    assert mounts["logs"]["readOnly"] is True and mounts["logs"]["mountPath"] == args[1]
    assert sts["spec"]["serviceName"] == manifest("Service")["metadata"]["name"]


def test_prometheus_labels_each_replica_with_its_shard():
    (pm,) = list(yaml.safe_load_all((K8S / "podmonitor.yaml").read_text()))
    selector = pm["spec"]["selector"]["matchLabels"]
    labels = manifest("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()  # the same PodMonitor scrapes every replica
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    shard = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "shard"]
    assert shard == [
        {"sourceLabels": ["__meta_kubernetes_pod_label_apps_kubernetes_io_pod_index"], "targetLabel": "shard"}
    ]
