"""The `aws` standby provider: start a stopped EC2 instance tagged as the site's standby, or launch one
from a launch template; wait for status checks and SSH; stop it again to return it to cold."""

import time

import boto3
import botocore.exceptions

from drtool.config import Config, Host, Site
from drtool.errors import OperationFailed, UsageError
from drtool.providers.base import StandbyProvider, wait_for_ssh

SITE_TAG = "drtool:site"
STANDBY_TAG = "drtool:standby"


class AwsProvider(StandbyProvider):
    name = "aws"

    def __init__(self, config: Config, site: Site, poll_s: float = 5.0, timeout: float = 600.0):
        pool = site.raw.get("standby_pool", {})
        self.site = site
        self.launch_template = pool.get("launch_template")
        self.poll_s = poll_s
        self.timeout = timeout
        # Endpoint and credentials the standard AWS ways (AWS_ENDPOINT_URL, profiles, instance roles).
        self.ec2 = boto3.client("ec2", region_name=pool.get("region"))

    # -- lookup -----------------------------------------------------------------------------------
    def _call(self, op: str, **kwargs):
        try:
            return getattr(self.ec2, op)(**kwargs)
        except botocore.exceptions.ClientError as exc:
            err = exc.response.get("Error", {})
            raise OperationFailed(f"EC2 {op} failed for site {self.site.name}: {err.get('Code')}: {err.get('Message')}",
                                  hint="check the standby's instance id or tags and the IAM permissions") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise OperationFailed(f"EC2 {op} failed: {exc}",
                                  hint="check AWS credentials, region and endpoint") from None

    def instance(self, host: Host) -> dict | None:
        """The host's instance: by instance_id, else by the standby tags (terminated ones ignored)."""
        if host.instance_id:
            resp = self._call("describe_instances", InstanceIds=[host.instance_id])
        else:
            resp = self._call("describe_instances", Filters=[
                {"Name": f"tag:{SITE_TAG}", "Values": [self.site.name]},
                {"Name": f"tag:{STANDBY_TAG}", "Values": [host.name]},
                {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
            ])
        found = [i for r in resp.get("Reservations", []) for i in r.get("Instances", [])]
        return found[0] if found else None

    def state(self, host: Host) -> str:
        inst = self.instance(host)
        if inst is None:
            return "absent"
        return {"running": "on", "stopped": "off"}.get(inst["State"]["Name"], "unknown")

    # -- power --------------------------------------------------------------------------------------
    def power_on(self, host: Host) -> None:
        inst = self.instance(host)
        if inst is None:
            if not self.launch_template:
                raise UsageError(f"no EC2 instance tagged {STANDBY_TAG}={host.name} in site {self.site.name}, "
                                 "and the standby_pool has no launch_template",
                                 hint="tag a stopped instance as the standby, or set standby_pool.launch_template")
            resp = self._call("run_instances", MinCount=1, MaxCount=1,
                              LaunchTemplate={"LaunchTemplateName": self.launch_template},
                              TagSpecifications=[{"ResourceType": "instance", "Tags": [
                                  {"Key": SITE_TAG, "Value": self.site.name},
                                  {"Key": STANDBY_TAG, "Value": host.name}]}])
            inst = resp["Instances"][0]
        elif inst["State"]["Name"] in ("stopped", "stopping"):
            self._wait_state(inst["InstanceId"], "stopped")
            self._call("start_instances", InstanceIds=[inst["InstanceId"]])
        self._wait_state(inst["InstanceId"], "running")
        self._wait_status_ok(inst["InstanceId"])

    def power_off(self, host: Host) -> None:
        inst = self.instance(host)
        if inst is None or inst["State"]["Name"] == "stopped":
            return
        self._call("stop_instances", InstanceIds=[inst["InstanceId"]])
        self._wait_state(inst["InstanceId"], "stopped")

    def address(self, host: Host) -> str:
        inst = self.instance(host)
        if inst is None or not inst.get("PrivateIpAddress"):
            raise OperationFailed(f"standby {host.name} has no instance or no private address yet")
        return inst["PrivateIpAddress"]

    def wait_ready(self, host: Host, timeout: float = 300) -> float:
        return wait_for_ssh(self.address(host), host.port, timeout)

    # -- waiting ------------------------------------------------------------------------------------
    def _wait(self, what: str, check) -> None:
        deadline = time.monotonic() + self.timeout
        while not check():
            if time.monotonic() > deadline:
                raise OperationFailed(f"{what} did not happen within {self.timeout:.0f}s")
            time.sleep(self.poll_s)

    def _wait_state(self, instance_id: str, state: str) -> None:
        def reached() -> bool:
            resp = self._call("describe_instances", InstanceIds=[instance_id])
            return resp["Reservations"][0]["Instances"][0]["State"]["Name"] == state

        self._wait(f"instance {instance_id} reaching {state}", reached)

    def _wait_status_ok(self, instance_id: str) -> None:
        def ok() -> bool:
            resp = self._call("describe_instance_status", InstanceIds=[instance_id])
            st = resp.get("InstanceStatuses", [])
            return bool(st) and st[0]["InstanceStatus"]["Status"] == "ok" and st[0]["SystemStatus"]["Status"] == "ok"

        self._wait(f"status checks of {instance_id}", ok)
