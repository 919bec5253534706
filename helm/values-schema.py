#!/usr/bin/env python3
"""Writes helm/twinbridge/values.schema.json: the chart's values schema, every object closed
(`additionalProperties: false`), `config` mirroring twinbridge's configuration model
(shared/config/src/model.rs) minus the keys the chart sets itself.

    python3 helm/values-schema.py > helm/twinbridge/values.schema.json

helm/check fails when the committed file differs from this script's output, and compares the
`config` part with the keys the twinbridge binary accepts.
"""
import json

def obj(props, required=None, desc=None, **kw):
    o = {"type": "object", "additionalProperties": False, "properties": props}
    if required: o["required"] = required
    if desc: o["description"] = desc
    o.update(kw)
    return o

def s(desc=None, **kw):
    o = {"type": "string"}; o.update(kw)
    if desc: o["description"] = desc
    return o
def b(desc=None):
    o = {"type": "boolean"}
    if desc: o["description"] = desc
    return o
def i(minimum=None, maximum=None, desc=None):
    o = {"type": "integer"}
    if minimum is not None: o["minimum"] = minimum
    if maximum is not None: o["maximum"] = maximum
    if desc: o["description"] = desc
    return o
def arr(items, **kw):
    o = {"type": "array", "items": items}; o.update(kw); return o
def smap(desc=None):
    o = {"type": "object", "additionalProperties": {"type": "string"}}
    if desc: o["description"] = desc
    return o
def enum(*vals, desc=None):
    o = {"type": "string", "enum": list(vals)}
    if desc: o["description"] = desc
    return o

DUR = {"type": "string", "pattern": "^\\s*([0-9]+\\s*[a-zµ]+\\s*)+$",
       "description": "a duration: 500ms, 10s, 5m, 1h 30m"}
def d(desc=None):
    o = dict(DUR)
    if desc: o["description"] = desc
    return o
PORT = i(1, 65535)
JSONPTR = s(pattern="^/")
TAG = s(pattern="^[^:]+:[^:]+$")

config = obj({
    "log": obj({"format": enum("text", "json"), "level": s()}),
    "store": obj({
        "urls": arr(s(pattern="^rediss?://"), minItems=1),
        "cluster": b(),
        "prefix": s(pattern="^[^{} ]+$"),
        "connect_timeout": d(),
        "response_timeout": d(),
    }, desc="backend (always redis) and password/password_file (secrets.keys.redisPassword) are set by the chart"),
    "platform": obj({
        "url": s(pattern="^https?://"),
        "timeout": d(),
        "headers": smap(),
        "accept_invalid_certs": b(),
    }, desc="app_key/app_key_file (secrets.keys.appKey) and ca_file (tls.platformCa) are set by the chart"),
    "scheduler": obj({
        "discovery_tag": TAG,
        "discovery_category": s(),
        "discovery_interval": d(),
        "discovery_concurrency": i(1),
        "shard_capacity": i(1),
        "shards_per_worker": i(1),
        "move_grace": d(),
        "auto_provision": obj({
            "enabled": b(), "template": s(), "tags": arr(TAG),
            "interval": d(), "max_per_round": i(1),
        }),
        "launcher": obj({
            "min_workers": i(0), "max_workers": i(1), "interval": d(),
            "kubernetes": obj({"timeout": d()},
                              desc="namespace, workload and name are set by the chart (the worker StatefulSet)"),
        }, desc="kind is set by the chart (worker.replicasOwner)"),
    }, desc="listen (scheduler.port) and admin_token/admin_token_file (secrets.keys.adminToken) are set by the chart"),
    "router": obj({
        "max_payload_bytes": i(1),
        "topic_templates": arr(s()),
        "thing_pointer": JSONPTR,
        "unknown_thing": enum("dead-letter", "drop", "provision"),
        "refresh_interval": d(),
        "max_batch_messages": i(1),
        "mqtt": obj({
            "enabled": b(), "host": s(), "port": PORT, "username": s(),
            "filters": arr(s()), "shared_group": s(),
            "batch_max": i(1), "batch_window": d(),
        }, desc="client_id (router.mqttClientIdPrefix + pod name), password (secrets.keys.mqttPassword) and ca_file/cert_file/key_file (tls.mqtt) are set by the chart"),
        "kinesis": obj({
            "enabled": b(), "stream": s(), "region": s(), "endpoint": s(pattern="^https?://"),
            "start": enum("trim-horizon", "latest", "at-timestamp"),
            "start_timestamp": s(), "max_records": i(1, 10000),
            "idle_poll": d(), "lease_ttl": d(), "shard_sync_interval": d(),
            "topic_pointer": JSONPTR, "timeout": d(),
        }, desc="AWS credentials come from IRSA (serviceAccount.roleArn), not from keys"),
    }, desc="listen (router.port), id (the pod name) and ingest_token/ingest_token_file (secrets.keys.ingestToken) are set by the chart"),
    "worker": obj({
        "max_shards": i(1), "lease_ttl": d(), "heartbeat_interval": d(),
        "batch_size": i(1), "flush_window": d(), "max_values_per_call": i(1),
        "platform_concurrency": i(1), "rate_limit": i(0),
        "retry_initial": d(), "retry_max": d(),
        "breaker_threshold": i(1), "breaker_cooldown": d(),
        "timestamp_field": s(), "model_cache_ttl": d(), "shutdown_grace": d(),
        "delivery_log": i(0, 10000), "delivery_log_ttl": d(),
        "bulk": obj({"thing": s(), "service": s(), "max_values": i(1)}),
        "presence": obj({"connected": s(), "last_change": s(), "disconnect_reason": s()}),
        "shadow": obj({
            "enabled": b(), "region": s(), "endpoint": s(pattern="^https?://"),
            "shadow_name": s(), "writable_category": s(), "echo_window": d(), "timeout": d(),
        }, desc="AWS credentials come from IRSA (serviceAccount.roleArn), not from keys"),
        "templates": arr(obj({
            "template": s(), "properties": smap(), "downlink_topic": s(),
        }, required=["template"])),
        "downlink": obj({
            "enabled": b(), "host": s(), "port": PORT, "client_id": s(), "username": s(), "timeout": d(),
        }, desc="password (secrets.keys.downlinkPassword) and ca_file/cert_file/key_file (tls.downlink) are set by the chart"),
    }, desc="listen (worker.port) and id (the pod name) are set by the chart"),
}, desc="twinbridge's TOML configuration (docs/configuration.md) without the keys the chart sets")

QUANTITY = {"type": ["string", "integer", "number"]}
resources = obj({
    "limits": obj({"cpu": QUANTITY, "memory": QUANTITY, "ephemeral-storage": QUANTITY}),
    "requests": obj({"cpu": QUANTITY, "memory": QUANTITY, "ephemeral-storage": QUANTITY}),
})
toleration = obj({
    "key": s(), "operator": enum("Exists", "Equal"), "value": s(),
    "effect": enum("NoSchedule", "PreferNoSchedule", "NoExecute"), "tolerationSeconds": i(),
})
K8S_PASSTHROUGH = {"type": "object", "description": "a Kubernetes object, passed through (Kubernetes validates it)"}
affinity = obj({"nodeAffinity": K8S_PASSTHROUGH, "podAffinity": K8S_PASSTHROUGH, "podAntiAffinity": K8S_PASSTHROUGH})
spread = arr(obj({
    "maxSkew": i(1), "topologyKey": s(), "whenUnsatisfiable": enum("DoNotSchedule", "ScheduleAnyway"),
    "labelSelector": K8S_PASSTHROUGH, "minDomains": i(1), "matchLabelKeys": arr(s()),
    "nodeAffinityPolicy": enum("Honor", "Ignore"), "nodeTaintsPolicy": enum("Honor", "Ignore"),
}, required=["maxSkew", "topologyKey", "whenUnsatisfiable"]))
env_var = obj({
    "name": s(pattern="^[A-Za-z_][A-Za-z0-9_.-]*$"), "value": s(),
    "valueFrom": obj({
        "secretKeyRef": obj({"name": s(), "key": s(), "optional": b()}, required=["key"]),
        "configMapKeyRef": obj({"name": s(), "key": s(), "optional": b()}, required=["key"]),
        "fieldRef": obj({"fieldPath": s(), "apiVersion": s()}, required=["fieldPath"]),
        "resourceFieldRef": obj({"resource": s(), "containerName": s(), "divisor": QUANTITY}, required=["resource"]),
    }),
}, required=["name"])
INTORPCT = {"type": ["integer", "string", "null"], "pattern": "^[0-9]+%$"}
pdb = obj({"enabled": b(), "minAvailable": INTORPCT, "maxUnavailable": INTORPCT},
          desc="set minAvailable or maxUnavailable; the other null")
service = obj({"type": enum("ClusterIP", "NodePort", "LoadBalancer"), "port": PORT})
def pod_common():
    return {
        "port": PORT,
        "resources": resources,
        "terminationGracePeriodSeconds": i(1),
        "podAnnotations": smap(),
        "podLabels": smap(),
        "nodeSelector": smap(),
        "tolerations": arr(toleration),
        "affinity": affinity,
        "topologySpreadConstraints": spread,
        "priorityClassName": s(),
        "extraEnv": arr(env_var),
        "pdb": pdb,
    }

scheduler = obj(dict(pod_common(), **{
    "replicas": i(1, desc="2 or more: one leads (a lease in Redis), the others take over"),
    "serviceAccount": obj({"create": b(), "name": s(), "annotations": smap()}),
    "service": service,
}))
router = obj(dict(pod_common(), **{
    "replicas": i(1),
    "autoscaling": obj({
        "enabled": b(), "minReplicas": i(1), "maxReplicas": i(1),
        "targetCPUUtilizationPercentage": i(1, 100), "targetMemoryUtilizationPercentage": i(0, 100),
    }),
    "mqttClientIdPrefix": s(pattern="^[A-Za-z0-9_-]+$"),
    "service": service,
}))
worker = obj(dict(pod_common(), **{
    "replicasOwner": enum("scheduler", "chart", desc="scheduler: the kubernetes launcher scales the StatefulSet (no `replicas` rendered); chart: `replicas`, launcher kind external"),
    "replicas": i(0),
}))

KEY = {"type": "string", "pattern": "^([-._a-zA-Z0-9]+)?$", "description": "a key of the Secret; empty = not used"}
values = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "twinbridge chart values",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "nameOverride": s(), "fullnameOverride": s(),
        "image": obj({"repository": s(minLength=1), "tag": s(), "digest": s(pattern="^(sha256:[a-f0-9]{64})?$"),
                      "pullPolicy": enum("Always", "IfNotPresent", "Never")}),
        "imagePullSecrets": arr(obj({"name": s()}, required=["name"])),
        "commonLabels": smap(),
        "serviceAccount": obj({"create": b(), "name": s(),
                               "roleArn": s(pattern="^(arn:aws[a-z-]*:iam::[0-9]{12}:role/.+)?$",
                                            description="IRSA: the annotation eks.amazonaws.com/role-arn"),
                               "annotations": smap()}),
        "secrets": obj({
            "existingSecret": s(pattern="^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$"),
            "keys": obj({"appKey": KEY, "adminToken": KEY, "redisPassword": KEY, "ingestToken": KEY,
                         "mqttPassword": KEY, "downlinkPassword": KEY}),
        }),
        "tls": obj({k: obj({"existingSecret": s()}) for k in ("mqtt", "downlink", "platformCa")}),
        "config": config,
        "scheduler": scheduler,
        "router": router,
        "worker": worker,
        "ingress": obj({
            "enabled": b(), "className": s(), "annotations": smap(),
            "hosts": arr(obj({"host": s(), "paths": arr(obj({
                "path": s(pattern="^/"), "pathType": enum("Prefix", "Exact", "ImplementationSpecific")},
                required=["path", "pathType"]), minItems=1)}, required=["host", "paths"])),
            "tls": arr(obj({"secretName": s(), "hosts": arr(s())}, required=["secretName"])),
        }),
        "serviceMonitor": obj({"enabled": b(), "interval": s(), "scrapeTimeout": s(), "labels": smap()}),
    },
}
print(json.dumps(values, indent=2, ensure_ascii=False))
