"""Which pod a CNI call is for: its annotations from the runtime when it passes them, else from the
object source; the pod's UID, when the runtime gives one, must match (a StatefulSet pod recreated
under the same name is another pod)."""

from __future__ import annotations

from dataclasses import replace

from cni.errors import InvalidEnvironment, UnknownContainer
from ipamd.model.objects import POD, POD_ANNOTATIONS_CAPABILITY, Meta, Pod
from ipamd.sources.base import ObjectSource
from ipamd.verbs.call import CniCall


def _same_uid(pod: Pod, uid: str) -> Pod:
    if uid and pod.meta.uid and uid != pod.meta.uid:
        raise UnknownContainer(f"pod {pod.meta.namespace}/{pod.meta.name} has UID {pod.meta.uid}, not {uid} (K8S_POD_UID)",
                               "K8S_POD_UID")
    return pod


def find_pod(source: ObjectSource, call: CniCall) -> Pod:
    ns, name, uid = (call.args.get(k, "") for k in ("K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_UID"))
    if not ns or not name:
        raise InvalidEnvironment("CNI_ARGS must name the pod (K8S_POD_NAMESPACE and K8S_POD_NAME)", "CNI_ARGS")
    runtime_annotations = (call.config.get("runtimeConfig") or {}).get(POD_ANNOTATIONS_CAPABILITY)
    pod = source.get(POD, ns, name)
    if pod is not None:
        pod = _same_uid(pod, uid)
        return replace(pod, annotations=dict(runtime_annotations)) if isinstance(runtime_annotations, dict) else pod
    if isinstance(runtime_annotations, dict) and uid:
        return Pod(Meta(POD.name, name, ns, uid, "runtime"), dict(runtime_annotations))
    found = source.wait_for_pod(ns, name)
    if found is not None:
        return _same_uid(found, uid)
    raise UnknownContainer(f"pod {ns}/{name} is not known to the object source", "K8S_POD_NAME")
