"""cluster.yaml (AWS, and its commented on-prem variant) against Ray's own config schema."""

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parent.parent / "cluster.yaml"


def check(config: dict) -> dict:
    """What `ray up` does before launching: fill in Ray's defaults, then validate."""
    config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    return config


def _local_variant() -> dict:
    lines = CLUSTER.read_text().splitlines()
    start, end = lines.index("# LOCAL-BEGIN"), lines.index("# LOCAL-END")
    return yaml.safe_load("\n".join(line.removeprefix("# ") for line in lines[start + 1 : end]))


def test_the_aws_cluster_config_validates_against_rays_schema():
    config = yaml.safe_load(CLUSTER.read_text())
    check(config)
    nodes = config["available_node_types"]
    assert config["provider"]["type"] == "aws"
    assert nodes["head"]["resources"] == {"CPU": 0}
    assert nodes["gpu_worker"]["node_config"]["InstanceType"].startswith("g5")
    assert all("IamInstanceProfile" in n["node_config"] for n in nodes.values())
    assert any("pip install" in c for c in config["setup_commands"])


def test_the_on_prem_variant_validates_too():
    config = _local_variant()
    check(config)
    assert config["provider"]["type"] == "local" and config["provider"]["worker_ips"]


def test_the_schema_check_is_real():
    config = yaml.safe_load(CLUSTER.read_text())
    broken = copy.deepcopy(config)
    broken["available_node_types"]["head"]["max_workers"] = "many"
    with pytest.raises(Exception, match="many"):
        check(broken)
