"""The moto half of deploy/ecs/check: creates the CloudFormation stack of deploy/ecs/twinbridge.yaml
in a moto server, checks what it made (resources, IAM policies, container configuration), then runs
the real `twinbridge scheduler` with the environment of the stack's scheduler task definition and
checks that its ECS launcher runs and stops worker tasks of the stack's worker task definition.

Started by deploy/ecs/check, which owns moto, Redis and the platform simulator (and cleans them up);
this script owns the scheduler processes it starts. Every failure raises with what was expected.
"""

import argparse
import ast
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from fnmatch import fnmatchcase

import boto3
import yaml

ACCOUNT = "123456789012"
REGION = "us-east-1"
STARTED_BY = "twinbridge-scheduler"
# Resource types moto's CloudFormation skips (with a warning); cfn-lint covers them.
MOTO_SKIPS = {
    "AWS::IoT::TopicRule",
    "AWS::ElastiCache::SubnetGroup",
    "AWS::ElastiCache::ParameterGroup",
    "AWS::ElastiCache::ReplicationGroup",
    "AWS::ApplicationAutoScaling::ScalableTarget",
    "AWS::ApplicationAutoScaling::ScalingPolicy",
}
# The config keys the check itself sets on top of the task definition's environment: the local
# listen address and a faster reconcile round. Everything else comes from the stack.
LOCAL_OVERRIDES = {"TWINBRIDGE_SCHEDULER__LISTEN", "TWINBRIDGE_SCHEDULER__LAUNCHER__INTERVAL"}


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def step(message):
    print(f"ecs check: {message}", flush=True)


class Cfn(yaml.SafeLoader):
    """Reads the template's short-form intrinsics (!Ref, !Sub…) as plain tagged values."""


Cfn.add_multi_constructor(
    "!",
    lambda loader, suffix, node: {
        suffix: (
            loader.construct_scalar(node)
            if isinstance(node, yaml.ScalarNode)
            else loader.construct_sequence(node)
            if isinstance(node, yaml.SequenceNode)
            else loader.construct_mapping(node)
        )
    },
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url, token=None, timeout=3):
    request = urllib.request.Request(url)
    if token:
        request.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.loads(r.read())


# ---------------------------------------------------------------------------- a small IAM evaluator
def _as_list(v):
    # moto leaves a list entry that is !If [c, x, !Ref AWS::NoValue] as None (CloudFormation drops it).
    return [x for x in v if x is not None] if isinstance(v, list) else [v]


def _condition_holds(condition, context):
    for operator, pairs in (condition or {}).items():
        for key, expected in pairs.items():
            actual = context.get(key)
            if operator in ("ArnEquals", "StringEquals"):
                if actual not in _as_list(expected):
                    return False
            elif operator in ("ArnLike", "StringLike"):
                if actual is None or not any(fnmatchcase(actual, e) for e in _as_list(expected)):
                    return False
            else:
                raise CheckFailed(f"the check's IAM evaluator does not know the operator {operator}")
    return True


def allowed(policies, action, resource, context):
    """Whether identity policies (no Deny in them) allow `action` on `resource` in `context`."""
    for document in policies:
        for s in _as_list(document["Statement"]):
            if s["Effect"] != "Allow":
                raise CheckFailed(f"unexpected {s['Effect']} statement {s}")
            if not any(fnmatchcase(action, a) for a in _as_list(s["Action"])):
                continue
            if not any(fnmatchcase(resource, r) for r in _as_list(s["Resource"])):
                continue
            if _condition_holds(s.get("Condition"), context):
                return True
    return False


def actions_of(policies):
    return {a for d in policies for s in _as_list(d["Statement"]) for a in _as_list(s["Action"])}


# ---------------------------------------------------------------------------- the check
class Check:
    def __init__(self, args):
        self.args = args
        kw = dict(
            endpoint_url=args.moto,
            region_name=REGION,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        self.cfn = boto3.client("cloudformation", **kw)
        self.ec2 = boto3.client("ec2", **kw)
        self.ecs = boto3.client("ecs", **kw)
        self.iam = boto3.client("iam", **kw)
        self.kinesis = boto3.client("kinesis", **kw)
        self.logs = boto3.client("logs", **kw)
        self.template_text = open(args.template).read()
        self.template = yaml.load(self.template_text, Loader=Cfn)
        self.admin_token = "check-admin-" + os.urandom(6).hex()
        self.prefix = "ecscheck" + os.urandom(3).hex()
        self.scheduler = None

    # -------------------------------------------------------------- moto set-up and the stack
    def moto_api(self, path, body):
        request = urllib.request.Request(
            self.args.moto + path, data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            expect(r.status < 300, f"{path}: HTTP {r.status}")

    def network(self):
        vpc = self.ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
        # moto gives awsvpc tasks an ENI only in a VPC with DNS hostnames.
        self.ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        subnets = [
            self.ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=az)["Subnet"]["SubnetId"]
            for cidr, az in (("10.20.1.0/24", "us-east-1a"), ("10.20.2.0/24", "us-east-1b"))
        ]
        return vpc, subnets

    def create_stack(self, vpc, subnets):
        self.secrets = {
            "PlatformAppKeySecretArn": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:tb/app-key-AbCdEf",
            "AdminTokenSecretArn": f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/tb/admin-token",
            "RedisPasswordSecretArn": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:tb/redis-GhIjKl",
        }
        self.params = {
            "Image": "twinbridge:check",
            "VpcId": vpc,
            "Subnets": ",".join(subnets),
            "PlatformUrl": f"{self.args.sim}/Thingworx",
            # An existing Redis (the check's own): ElastiCache is not created by moto anyway.
            "RedisUrl": f"redis://127.0.0.1:{self.args.redis_port}",
            "StorePrefix": self.prefix,
            # 30 Things / 5 per shard = 6 shards; / 2 per worker = 3 workers.
            "ShardCapacity": "5",
            "ShardsPerWorker": "2",
            "MinWorkers": "1",
            "MaxWorkers": "10",
            **self.secrets,
        }
        self.stack_name = "tb-check"
        self.cfn.create_stack(
            StackName=self.stack_name,
            TemplateBody=self.template_text,
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in self.params.items()],
            Capabilities=["CAPABILITY_IAM"],
        )
        deadline = time.time() + 30
        while True:
            stack = self.cfn.describe_stacks(StackName=self.stack_name)["Stacks"][0]
            if not stack["StackStatus"].endswith("IN_PROGRESS"):
                break
            expect(time.time() < deadline, f"stack still {stack['StackStatus']} after 30 s")
            time.sleep(0.2)
        expect(
            stack["StackStatus"] == "CREATE_COMPLETE",
            f"stack {stack['StackStatus']}: {stack.get('StackStatusReason')}",
        )
        self.outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        summaries = self.cfn.list_stack_resources(StackName=self.stack_name)["StackResourceSummaries"]
        self.physical = {
            r["LogicalResourceId"]: r["PhysicalResourceId"] for r in summaries if r["LogicalResourceId"]
        }
        step(f"stack {self.stack_name} created: {len(self.physical)} resources")

    # -------------------------------------------------------------- what the stack made
    def check_resources(self):
        # Every resource of the template is there, except those of a false condition (the check
        # passes an existing Redis) and the types moto skips.
        false_conditions = {"CreateRedis"}
        wanted = {
            name
            for name, r in self.template["Resources"].items()
            if r.get("Condition") not in false_conditions and r["Type"] not in MOTO_SKIPS
        }
        expect(wanted <= set(self.physical), f"missing from the stack: {sorted(wanted - set(self.physical))}")
        p = self.physical
        o = self.outputs
        expect(o["ClusterName"] == p["Cluster"], f"ClusterName output {o['ClusterName']} != {p['Cluster']}")
        expect(o["WorkerTaskDefinitionArn"] == p["WorkerTaskDefinition"], "WorkerTaskDefinitionArn output")
        expect(o["StreamName"] == p["Stream"], "StreamName output")
        expect(o["TaskSecurityGroupId"] == p["TaskSecurityGroup"], "TaskSecurityGroupId output")
        expect("RedisEndpoint" not in o, "RedisEndpoint output without a created Redis")

        clusters = self.ecs.describe_clusters(clusters=[p["Cluster"]])["clusters"]
        expect(len(clusters) == 1 and clusters[0]["status"] == "ACTIVE", f"cluster {clusters}")
        self.cluster_arn = clusters[0]["clusterArn"]
        expect(o["ClusterArn"] == self.cluster_arn, "ClusterArn output")

        services = self.ecs.describe_services(
            cluster=p["Cluster"], services=[p["SchedulerService"], p["RouterService"]]
        )["services"]
        by_td = {s["taskDefinition"]: s for s in services}
        sched = by_td[p["SchedulerTaskDefinition"]]
        router = by_td[p["RouterTaskDefinition"]]
        expect(sched["desiredCount"] == 2, f"scheduler service desiredCount {sched['desiredCount']}")
        expect(router["desiredCount"] == 2, f"router service desiredCount {router['desiredCount']}")
        # moto's AWS::ECS::Service takes only the cluster, task definition and count: the launch type
        # and network are checked in the template.
        for name in ("SchedulerService", "RouterService"):
            props = self.template["Resources"][name]["Properties"]
            vpc = props["NetworkConfiguration"]["AwsvpcConfiguration"]
            expect(props["LaunchType"] == "FARGATE", f"{name} launch type")
            expect(vpc["Subnets"] == {"Ref": "Subnets"}, f"{name} subnets {vpc}")
            expect(vpc["SecurityGroups"] == [{"Ref": "TaskSecurityGroup"}], f"{name} security groups {vpc}")
        # No ECS service for workers: the launcher owns them.
        expect(
            all(s["taskDefinition"] != p["WorkerTaskDefinition"] for s in services)
            and not any(r["Type"] == "AWS::ECS::Service" and "Worker" in n for n, r in self.template["Resources"].items()),
            "an ECS service runs workers",
        )

        stream = self.kinesis.describe_stream_summary(StreamName=p["Stream"])["StreamDescriptionSummary"]
        expect(stream["OpenShardCount"] == 2, f"stream shards {stream['OpenShardCount']}")
        expect(stream["RetentionPeriodHours"] == 48, f"stream retention {stream['RetentionPeriodHours']}")
        self.stream_arn = stream["StreamARN"]
        expect(o["StreamArn"] == self.stream_arn, "StreamArn output")

        groups = {g["logGroupName"] for g in self.logs.describe_log_groups()["logGroups"]}
        expect(p["LogGroup"] in groups, f"log group {p['LogGroup']} not in {groups}")

        self.task_defs = {}
        for role, logical in (("scheduler", "SchedulerTaskDefinition"), ("router", "RouterTaskDefinition"), ("worker", "WorkerTaskDefinition")):
            td = self.ecs.describe_task_definition(taskDefinition=p[logical])["taskDefinition"]
            expect(td["taskDefinitionArn"] == p[logical], f"{logical} arn")
            expect(td["family"] == f"{self.stack_name}-{role}", f"{logical} family {td['family']}")
            # moto's AWS::ECS::TaskDefinition keeps the family, containers, volumes and memory only:
            # network mode, compatibilities and roles are checked in the template.
            props = self.template["Resources"][logical]["Properties"]
            title = role.capitalize()
            expect(props["NetworkMode"] == "awsvpc", f"{logical} network mode")
            expect(props["RequiresCompatibilities"] == ["FARGATE"], f"{logical} compatibilities")
            expect(props["TaskRoleArn"] == {"GetAtt": f"{title}TaskRole.Arn"}, f"{logical} task role")
            expect(props["ExecutionRoleArn"] == {"GetAtt": f"{title}ExecutionRole.Arn"}, f"{logical} execution role")
            (c,) = td["containerDefinitions"]
            expect(c["name"] == role, f"{logical} container {c['name']}")
            expect(c["command"] == [role], f"{logical} command {c['command']}")
            expect(c.get("memory"), f"{logical}: a container-level memory (moto's Fargate RunTask needs it)")
            log = c["logConfiguration"]
            expect(log["logDriver"] == "awslogs" and log["options"]["awslogs-group"] == p["LogGroup"], f"{logical} logs {log}")
            hc = c["healthCheck"]["command"]
            expect("/healthz" in hc[-1], f"{logical} health check {hc}")
            self.task_defs[role] = td
        step("resources, outputs, services (2 schedulers, 2 routers, no worker service), stream, logs: ok")

    def role_policies(self, logical):
        name = self.physical[logical]
        docs = []
        for policy in self.iam.list_role_policies(RoleName=name)["PolicyNames"]:
            doc = self.iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
            if isinstance(doc, str):
                # moto keeps a policy given inline in CloudFormation as Python's repr of it.
                try:
                    doc = json.loads(doc)
                except json.JSONDecodeError:
                    doc = ast.literal_eval(doc)
            docs.append(doc)
        expect(not self.iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"], f"{logical}: managed policies attached")
        return docs

    def role_arn(self, logical):
        return self.iam.get_role(RoleName=self.physical[logical])["Role"]["Arn"]

    def check_iam(self, worker_task_arns):
        p = self.physical
        arn = lambda service, rest: f"arn:aws:{service}:{REGION}:{ACCOUNT}:{rest}"  # noqa: E731
        cluster_ctx = {"ecs:cluster": self.cluster_arn}
        other_ctx = {"ecs:cluster": arn("ecs", "cluster/another")}

        # Scheduler: exactly what services/scheduler/src/launcher/ecs.rs calls, for this cluster and
        # the worker family only, and PassRole of the worker's two roles only.
        sched = self.role_policies("SchedulerTaskRole")
        expect(
            actions_of(sched) == {"ecs:RunTask", "ecs:StopTask", "ecs:DescribeTasks", "ecs:ListTasks", "iam:PassRole"},
            f"scheduler task role actions {actions_of(sched)}",
        )
        worker_td = p["WorkerTaskDefinition"]
        expect(allowed(sched, "ecs:RunTask", worker_td, cluster_ctx), f"RunTask {worker_td}")
        expect(allowed(sched, "ecs:RunTask", re.sub(r":\d+$", ":7", worker_td), cluster_ctx), "RunTask of a later revision")
        expect(not allowed(sched, "ecs:RunTask", worker_td, other_ctx), "RunTask in another cluster allowed")
        expect(not allowed(sched, "ecs:RunTask", p["SchedulerTaskDefinition"], cluster_ctx), "RunTask of the scheduler family allowed")
        expect(allowed(sched, "ecs:ListTasks", "*", cluster_ctx), "ListTasks")
        expect(not allowed(sched, "ecs:ListTasks", "*", other_ctx), "ListTasks of another cluster allowed")
        for task in worker_task_arns:
            for action in ("ecs:DescribeTasks", "ecs:StopTask"):
                expect(allowed(sched, action, task, cluster_ctx), f"{action} {task}")
                expect(not allowed(sched, action, task.replace(p["Cluster"], "another"), other_ctx), f"{action} elsewhere allowed")
        pass_ctx = {"iam:PassedToService": "ecs-tasks.amazonaws.com"}
        for logical in ("WorkerTaskRole", "WorkerExecutionRole"):
            expect(allowed(sched, "iam:PassRole", self.role_arn(logical), pass_ctx), f"PassRole {logical}")
        for logical in ("SchedulerTaskRole", "RouterTaskRole", "SchedulerExecutionRole", "IotRuleRole"):
            expect(not allowed(sched, "iam:PassRole", self.role_arn(logical), pass_ctx), f"PassRole {logical} allowed")

        # Router: the three lease-less Kinesis read calls of shared/aws/src/kinesis.rs, on the stream.
        router = self.role_policies("RouterTaskRole")
        expect(
            actions_of(router) == {"kinesis:ListShards", "kinesis:GetShardIterator", "kinesis:GetRecords"},
            f"router task role actions {actions_of(router)}",
        )
        for action in actions_of(router):
            expect(allowed(router, action, self.stream_arn, {}), f"{action} on the stream")
            expect(not allowed(router, action, self.stream_arn + "-other", {}), f"{action} on another stream")

        # Worker: shadow updates of Things (no downlink topic pattern given: no iot:Publish).
        worker = self.role_policies("WorkerTaskRole")
        expect(actions_of(worker) == {"iot:UpdateThingShadow"}, f"worker task role actions {actions_of(worker)}")
        expect(allowed(worker, "iot:UpdateThingShadow", arn("iot", "thing/sensor-1"), {}), "UpdateThingShadow")

        # IoT rules: PutRecord into the stream only (and their error log group).
        rule = self.role_policies("IotRuleRole")
        expect(allowed(rule, "kinesis:PutRecord", self.stream_arn, {}), "rule role PutRecord")
        expect(actions_of(rule) == {"kinesis:PutRecord", "logs:CreateLogStream", "logs:PutLogEvents"}, f"rule role actions {actions_of(rule)}")

        # Execution roles: each reads exactly the secrets its container references.
        needs = {
            "SchedulerExecutionRole": ["PlatformAppKeySecretArn", "AdminTokenSecretArn", "RedisPasswordSecretArn"],
            "RouterExecutionRole": ["RedisPasswordSecretArn"],
            "WorkerExecutionRole": ["PlatformAppKeySecretArn", "RedisPasswordSecretArn"],
        }
        for logical, names in needs.items():
            docs = self.role_policies(logical)
            for key, secret in self.secrets.items():
                for action in ("secretsmanager:GetSecretValue", "ssm:GetParameters"):
                    expect(allowed(docs, action, secret, {}) == (key in names), f"{logical} {action} {key}")
            expect(not allowed(docs, "secretsmanager:GetSecretValue", secret + "x", {}), f"{logical} reads other secrets")
            role = logical.replace("ExecutionRole", "").lower()
            refs = {s["valueFrom"] for s in _as_list(self.task_defs[role]["containerDefinitions"][0].get("secrets", []))}
            expect(refs == {self.secrets[n] for n in names}, f"{role} container secrets {refs}")
        step("IAM: scheduler (RunTask/StopTask/DescribeTasks/ListTasks in this cluster, PassRole of the worker roles), router (ListShards/GetShardIterator/GetRecords), worker, rule and execution roles: ok")

    # -------------------------------------------------------------- container configuration
    def container_env(self, role, secrets):
        c = self.task_defs[role]["containerDefinitions"][0]
        env = {e["name"]: e["value"] for e in _as_list(c.get("environment", []))}
        for s in _as_list(c.get("secrets", [])):
            env[s["name"]] = secrets[s["name"]]
        return env

    def run_bin(self, args, env, **kw):
        # A clean environment: only what ECS would give the container.
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.args.workdir}
        return subprocess.run([self.args.bin, *args], env={**base, **env}, capture_output=True, text=True, timeout=20, **kw)

    def check_config(self):
        secrets = {
            "TWINBRIDGE_PLATFORM__APP_KEY": self.args.sim_app_key,
            "TWINBRIDGE_SCHEDULER__ADMIN_TOKEN": self.admin_token,
            "TWINBRIDGE_STORE__PASSWORD": self.args.redis_password,
        }
        self.secret_values = secrets
        for role in ("scheduler", "router", "worker"):
            env = self.container_env(role, secrets)
            r = self.run_bin(["config", "check", "--print"], env)
            expect(r.returncode == 0, f"{role} container config rejected (exit {r.returncode}):\n{r.stderr}{r.stdout}")
            printed = r.stdout
            if role == "scheduler":
                expect('kind = "ecs"' in printed, f"scheduler launcher kind:\n{printed}")
                expect(self.physical["Cluster"] in printed, "scheduler launcher cluster")
            if role == "router":
                expect(self.physical["Stream"] in printed, "router kinesis stream")
            for secret in (self.admin_token, self.args.sim_app_key, self.args.redis_password):
                expect(secret not in printed, f"{role}: a secret printed")
        step("the scheduler, router and worker containers' environment is a valid twinbridge configuration")

    def check_tls_store(self):
        """A created Redis is `rediss://` with AUTH: the worker container, with only the Redis URL
        (and its listen address) changed, must connect to a TLS-only Redis that wants the password,
        verifying its certificate against the trust store (SSL_CERT_FILE here, the image's CA
        certificates on ECS)."""
        props = self.template["Resources"]["WorkerTaskDefinition"]["Properties"]
        urls = next(e["Value"] for e in props["ContainerDefinitions"][0]["Environment"] if isinstance(e, dict) and e.get("Name") == "TWINBRIDGE_STORE__URLS")
        created = urls["If"][1]["Sub"]
        expect(created.startswith("[rediss://"), f"the created Redis's URL is not TLS: {created}")
        port = free_port()
        env = self.container_env("worker", self.secret_values)
        env.update(
            {
                "TWINBRIDGE_STORE__URLS": f"[rediss://127.0.0.1:{self.args.redis_tls_port}]",
                "TWINBRIDGE_WORKER__LISTEN": f"127.0.0.1:{port}",
                "SSL_CERT_FILE": self.args.ca_file,
            }
        )
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.args.workdir}
        log_path = os.path.join(self.args.workdir, "worker-tls.log")
        with open(log_path, "w") as log:
            worker = subprocess.Popen([self.args.bin, "worker"], env={**base, **env}, stdout=log, stderr=subprocess.STDOUT)
        with open(os.path.join(self.args.workdir, "worker.pid"), "w") as f:
            f.write(str(worker.pid))
        try:
            deadline = time.time() + 15
            while True:
                if worker.poll() is not None:
                    raise CheckFailed(f"the worker exited ({worker.returncode}):\n{open(log_path).read()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                        if r.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError, socket.timeout):
                    pass
                if time.time() > deadline:
                    raise CheckFailed(f"the worker is not ready on a TLS Redis after 15 s:\n{open(log_path).read()[-2000:]}")
                time.sleep(0.1)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            open(os.path.join(self.args.workdir, "worker.pid"), "w").close()
        step("the worker container reaches a TLS-only Redis with AUTH (rediss://, as for a created Redis)")

    # -------------------------------------------------------------- the real scheduler
    def start_scheduler(self, extra_env, tag):
        port = free_port()
        env = self.container_env("scheduler", self.secret_values)
        local = {
            "TWINBRIDGE_SCHEDULER__LISTEN": f"127.0.0.1:{port}",
            "TWINBRIDGE_SCHEDULER__LAUNCHER__INTERVAL": "1s",
            **extra_env,
        }
        expect(set(local) - set(extra_env) == LOCAL_OVERRIDES, "local overrides")
        for k in extra_env:
            expect(k in env, f"{k} overrides nothing of the task definition")
        # The check's own layer, a file: the moto endpoint with dummy credentials, and environment
        # overrides for the worker container.
        config = os.path.join(self.args.workdir, "scheduler.toml")
        with open(config, "w") as f:
            f.write(
                "[scheduler.launcher.ecs]\n"
                f'endpoint_url = "{self.args.moto}"\n'
                'access_key_id = "test"\n'
                'secret_access_key = "test"\n'
                "[scheduler.launcher.ecs.environment]\n"
                'TWINBRIDGE_LOG__LEVEL = "debug"\n'
                'TWINBRIDGE_WORKER__MAX_SHARDS = "4"\n'
            )
        log = open(os.path.join(self.args.workdir, f"scheduler-{tag}.log"), "w")
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.args.workdir}
        self.scheduler = subprocess.Popen(
            [self.args.bin, "scheduler"],
            env={**base, **env, **local, "TWINBRIDGE_CONFIG": config},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.scheduler_log = log.name
        with open(os.path.join(self.args.workdir, "scheduler.pid"), "w") as f:
            f.write(str(self.scheduler.pid))
        self.scheduler_url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 15
        while True:
            expect(self.scheduler.poll() is None, f"the scheduler exited ({self.scheduler.returncode})")
            try:
                with urllib.request.urlopen(self.scheduler_url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                pass
            expect(time.time() < deadline, "the scheduler's /healthz did not answer in 15 s")
            time.sleep(0.1)
        return port

    def stop_scheduler(self):
        if self.scheduler and self.scheduler.poll() is None:
            self.scheduler.send_signal(signal.SIGTERM)
            try:
                code = self.scheduler.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.scheduler.kill()
                self.scheduler.wait()
                raise CheckFailed("the scheduler did not stop within 15 s of SIGTERM")
            expect(code == 0, f"the scheduler exited with {code} on SIGTERM")
        self.scheduler = None
        open(os.path.join(self.args.workdir, "scheduler.pid"), "w").close()

    def tasks(self):
        cluster = self.physical["Cluster"]
        arns = self.ecs.list_tasks(cluster=cluster, startedBy=STARTED_BY)["taskArns"]
        if not arns:
            return []
        return self.ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"]

    @staticmethod
    def live(tasks):
        return [t for t in tasks if t["desiredStatus"] == "RUNNING" and t["lastStatus"] != "STOPPED"]

    def wait_live(self, count, seconds):
        deadline = time.time() + seconds
        most = 0
        while True:
            live = self.live(self.tasks())
            most = max(most, len(live))
            expect(most <= max(count, 3), f"{most} live worker tasks, more than ever wanted")
            if len(live) == count:
                # Stays there for two more rounds.
                time.sleep(2.2)
                live = self.live(self.tasks())
                expect(len(live) == count, f"{len(live)} live worker tasks after settling at {count}")
                return live
            if time.time() > deadline:
                raise CheckFailed(f"{len(live)} live worker tasks after {seconds} s, expected {count}")
            time.sleep(0.25)

    def fleet(self):
        return http_json(self.scheduler_url + "/v1/fleet", token=self.admin_token)

    def check_health_command(self, port):
        hc = self.task_defs["scheduler"]["containerDefinitions"][0]["healthCheck"]["command"]
        expect(hc[:3] == ["CMD", "bash", "-c"], f"health check form {hc}")
        script = hc[3]
        expect("/127.0.0.1/8080" in script, f"health check port {script}")
        ok = subprocess.run(["bash", "-c", script.replace("/8080", f"/{port}")], timeout=10)
        expect(ok.returncode == 0, f"the container health check fails against a healthy scheduler ({ok.returncode})")
        bad = subprocess.run(["bash", "-c", script.replace("/8080", f"/{free_port()}")], timeout=10, stderr=subprocess.DEVNULL)
        expect(bad.returncode != 0, "the container health check passes without a scheduler")
        step("the task definition's /healthz health check passes against the scheduler (and fails without one)")

    def run_scheduler(self):
        p = self.physical
        port = self.start_scheduler({}, "up")
        step(f"scheduler up on 127.0.0.1:{port} with the stack's scheduler environment; waiting for 3 workers")
        live = self.wait_live(3, 30)
        for t in live:
            expect(t["taskDefinitionArn"] == p["WorkerTaskDefinition"], f"task definition {t['taskDefinitionArn']}")
            expect(t["clusterArn"] == self.cluster_arn, f"cluster {t['clusterArn']}")
            expect(t["startedBy"] == STARTED_BY, f"startedBy {t.get('startedBy')}")
            expect(t.get("launchType") == "FARGATE", f"launch type {t.get('launchType')}")
            overrides = t["overrides"]["containerOverrides"]
            expect(len(overrides) == 1 and overrides[0]["name"] == "worker", f"container overrides {overrides}")
            env = {e["name"]: e["value"] for e in overrides[0].get("environment", [])}
            expect(
                env == {"TWINBRIDGE_LOG__LEVEL": "debug", "TWINBRIDGE_WORKER__MAX_SHARDS": "4"},
                f"worker environment overrides {env}",
            )
        fleet = self.fleet()
        expect((fleet["things"], fleet["shards"]) == (30, 6), f"fleet {fleet}")
        launcher = fleet["launcher"]
        expect(launcher["kind"] == "ecs" and launcher["leading"] and not launcher.get("error"), f"launcher {launcher}")
        expect(launcher["last"]["desired"] == 3, f"launcher desired {launcher['last']}")
        step(f"3 worker tasks of {p['WorkerTaskDefinition']} with the environment overrides: ok")
        self.check_health_command(port)
        started = [t["taskArn"] for t in live]
        self.stop_scheduler()

        # A lower maximum (a new scheduler revision, say): the new leader stops the surplus.
        port = self.start_scheduler({"TWINBRIDGE_SCHEDULER__LAUNCHER__MAX_WORKERS": "1"}, "down")
        step("scheduler restarted with max_workers = 1; waiting for the surplus to stop")
        live = self.wait_live(1, 30)
        expect(live[0]["taskArn"] in started, "the survivor is a task of the first run")
        all_tasks = {t["taskArn"]: t for t in self.tasks()}
        stopped = [all_tasks[a] for a in started if a != live[0]["taskArn"]]
        expect(len(stopped) == 2, f"stopped {len(stopped)}")
        for t in stopped:
            expect(t["desiredStatus"] == "STOPPED", f"{t['taskArn']} desired {t['desiredStatus']}")
            expect("surplus worker (desired 1)" in t.get("stoppedReason", ""), f"stopped reason {t.get('stoppedReason')}")
        launcher = self.fleet()["launcher"]
        expect(launcher["last"]["desired"] == 1, f"launcher after the restart {launcher}")
        self.stop_scheduler()
        # (moto's tasks have no createdAt, so which ones the launcher stops first, newest, is not seen here.)
        step("2 surplus worker tasks stopped with the launcher's reason, 1 left: ok")
        return started

    def main(self):
        t0 = time.time()
        # Tasks stay where they are (moto otherwise moves them towards STOPPED on every describe).
        self.moto_api(
            "/moto-api/state-manager/set-transition",
            {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 1000000}},
        )
        vpc, subnets = self.network()
        self.create_stack(vpc, subnets)
        self.check_resources()
        self.check_config()
        self.check_tls_store()
        try:
            started = self.run_scheduler()
        except BaseException:
            if self.scheduler is not None:
                self.scheduler.kill()
                self.scheduler.wait()
                print(f"--- {self.scheduler_log} (last 40 lines)", file=sys.stderr)
                with open(self.scheduler_log) as f:
                    sys.stderr.writelines(f.readlines()[-40:])
            raise
        self.check_iam(started)
        step(f"moto part done in {time.time() - t0:.1f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--template", required=True)
    parser.add_argument("--moto", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--redis-port", required=True, type=int)
    parser.add_argument("--redis-tls-port", required=True, type=int, help="a Redis speaking only TLS")
    parser.add_argument("--ca-file", required=True, help="the CA of the TLS Redis's certificate")
    parser.add_argument("--sim", required=True, help="http://127.0.0.1:PORT of the platform simulator")
    parser.add_argument("--sim-app-key", required=True)
    parser.add_argument("--bin", required=True, help="the twinbridge binary")
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    # The Redis password (the value of the stack's RedisPasswordSecretArn), not on the command line.
    args.redis_password = os.environ["CHECK_REDIS_PASSWORD"]
    # Stopped by deploy/ecs/check's trap: unwind, so that the scheduler started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        Check(args).main()
    except CheckFailed as e:
        print(f"ecs check: FAILED: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
