"""The AWS code paths (EC2 standby provider, Route 53 DNS) against moto's EC2 and Route 53 APIs over HTTP.

AWS itself cannot run here; the code is the same that talks to AWS, only the endpoint differs."""

from __future__ import annotations

import boto3
import pytest
import yaml

from drtool.config import load_config
from drtool.errors import OperationFailed, UsageError
from drtool.execute.dns import Route53Dns, dns_for
from drtool.providers import get_provider
from drtool.providers.aws import SITE_TAG, STANDBY_TAG, AwsProvider

from .conftest import REPO


def _aws_config(tmp_path, **pool_extra):
    doc = yaml.safe_load((REPO / "inventory" / "drtool.example.yaml").read_text())
    pool = doc["sites"]["dr-east"]["standby_pool"]
    pool.update(provider="aws", region="us-east-1", **pool_extra)
    doc["sites"]["dr-east"]["dns"] = {"provider": "route53", "zone_id": "PLACEHOLDER", "record": "model.example.com",
                                      "ttl": 60}
    path = tmp_path / "drtool.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(path)


def _fast(provider: AwsProvider) -> AwsProvider:
    provider.poll_s, provider.timeout = 0.1, 30
    return provider


def _standby_instance(site: str, name: str, stopped: bool = True) -> str:
    ec2 = boto3.client("ec2")
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    inst = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="g5.xlarge",
                             TagSpecifications=[{"ResourceType": "instance", "Tags": [
                                 {"Key": SITE_TAG, "Value": site}, {"Key": STANDBY_TAG, "Value": name}]}])
    iid = inst["Instances"][0]["InstanceId"]
    if stopped:
        ec2.stop_instances(InstanceIds=[iid])
    return iid


def test_aws_provider_starts_and_stops_the_tagged_standby(aws_env, tmp_path):
    cfg = _aws_config(tmp_path)
    site = cfg.site("dr-east")
    host = site.hosts[0]
    iid = _standby_instance("dr-east", host.name)
    provider = _fast(get_provider(cfg, site))
    assert isinstance(provider, AwsProvider)
    assert provider.state(host) == "off"
    provider.power_on(host)
    assert provider.state(host) == "on"
    assert provider.instance(host)["InstanceId"] == iid
    assert provider.address(host)
    provider.power_off(host)
    assert provider.state(host) == "off"


def test_aws_provider_launches_from_template_when_no_instance(aws_env, tmp_path):
    ec2 = boto3.client("ec2")
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    ec2.create_launch_template(LaunchTemplateName="drtool-standby",
                               LaunchTemplateData={"ImageId": ami, "InstanceType": "g5.xlarge"})
    cfg = _aws_config(tmp_path, launch_template="drtool-standby")
    site = cfg.site("dr-east")
    host = site.hosts[1]
    provider = _fast(get_provider(cfg, site))
    assert provider.state(host) == "absent"
    provider.power_on(host)
    inst = provider.instance(host)
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags[STANDBY_TAG] == host.name and tags[SITE_TAG] == "dr-east"
    assert provider.state(host) == "on"


def test_aws_provider_without_instance_or_template_is_a_usage_error(aws_env, tmp_path):
    cfg = _aws_config(tmp_path)
    site = cfg.site("dr-east")
    from dataclasses import replace

    ghost = replace(site.hosts[0], name="ghost-standby")
    with pytest.raises(UsageError) as info:
        _fast(get_provider(cfg, site)).power_on(ghost)
    assert "launch_template" in info.value.message


def test_aws_provider_unknown_instance_id_names_the_failure(aws_env, tmp_path):
    cfg = _aws_config(tmp_path)
    site = cfg.site("dr-east")
    from dataclasses import replace

    with pytest.raises(OperationFailed) as info:
        _fast(get_provider(cfg, site)).power_on(replace(site.hosts[0], instance_id="i-0123456789abcdef0"))
    assert "EC2 describe_instances failed" in info.value.message


def test_route53_upsert_tracks_change_until_insync(aws_env, tmp_path):
    r53 = boto3.client("route53")
    zone = r53.create_hosted_zone(Name="example.com", CallerReference="drtool-test")["HostedZone"]["Id"]
    cfg = _aws_config(tmp_path)
    from dataclasses import replace

    target = replace(cfg.site("dr-east").dns, zone_id=zone.split("/")[-1])
    dns = dns_for(target)
    assert isinstance(dns, Route53Dns)
    dns.poll_s = 0.05
    assert dns.read_a().addresses == []
    change_id = dns.replace_a(["10.0.2.21"])
    assert change_id
    rec = dns.read_a()
    assert rec.addresses == ["10.0.2.21"] and rec.ttl == 60
    dns.replace_a(["10.0.1.11"], ttl=30)
    rec = dns.read_a()
    assert rec.addresses == ["10.0.1.11"] and rec.ttl == 30


def test_route53_unknown_zone_is_a_clear_failure(aws_env, tmp_path):
    cfg = _aws_config(tmp_path)
    from dataclasses import replace

    dns = dns_for(replace(cfg.site("dr-east").dns, zone_id="ZNOSUCHZONE"))
    with pytest.raises(OperationFailed) as info:
        dns.replace_a(["10.0.2.21"])
    assert "ZNOSUCHZONE" in info.value.message
