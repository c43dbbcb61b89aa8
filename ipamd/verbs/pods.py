"""Which pod a CNI call is for: its annotations from the runtime when it passes them, else from the
object source; the pod's UID, when the runtime gives one, must match (a StatefulSet pod recreated
under the same name is another pod, which the source may still show at its old UID for a moment)."""

from __future__ import annotations

from dataclasses import replace

from cni.errors import InvalidEnvironment, TryAgainLater, UnknownContainer
from ipamd.model.objects import POD, POD_ANNOTATIONS_CAPABILITY, Meta, Pod
from ipamd.sources.base import ObjectSource, at_uid
from ipamd.verbs.call import CniCall


def _same_uid(pod: Pod, uid: str) -> Pod:
    if not at_uid(pod, uid):
        raise UnknownContainer(f"pod {pod.meta.namespace}/{pod.meta.name} has UID {pod.meta.uid}, not {uid} (K8S_POD_UID)",
                               "K8S_POD_UID")
    return pod


def find_pod(source: ObjectSource, call: CniCall) -> Pod:
    """The source's pod at the call's UID. One it does not show at that UID (none of that name, or the one before it)
    is the runtime's when the runtime passed the pod's annotations and UID: nothing to wait for; else it is waited for
    (``ObjectSource.wait_for_pod``)."""
    ns, name, uid = (call.args.get(k, "") for k in ("K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_UID"))
    if not ns or not name:
        raise InvalidEnvironment("CNI_ARGS must name the pod (K8S_POD_NAMESPACE and K8S_POD_NAME)", "CNI_ARGS")
    runtime = (call.config.get("runtimeConfig") or {}).get(POD_ANNOTATIONS_CAPABILITY)
    runtime_annotations = dict(runtime) if isinstance(runtime, dict) else None
    pod = source.get(POD, ns, name)
    if pod is None or not at_uid(pod, uid):
        if runtime_annotations is not None and uid:
            return Pod(Meta(POD.name, name, ns, uid, "runtime"), runtime_annotations)
        pod = _waited(source, ns, name, uid, pod)
    return replace(pod, annotations=runtime_annotations) if runtime_annotations is not None else pod


def _waited(source: ObjectSource, ns: str, name: str, uid: str, cached: Pod | None) -> Pod:
    """The pod once the source shows it at ``uid`` or has read it directly: still another pod (the one before, or
    one made since: the pod of this call is gone) is code 3, as is none; a read that failed is 11."""
    try:
        pod = source.wait_for_pod(ns, name, uid) or cached  # none of that name now: the cached one says which it was
    except TryAgainLater as exc:
        seen = f"at UID {cached.meta.uid} in the object source, not {uid}," if cached is not None \
            else "not in the object source yet,"
        raise TryAgainLater(f"pod {ns}/{name} is {seen} and could not be read directly: {exc.msg} ({exc.details})",
                            "K8S_POD_UID" if cached is not None else "K8S_POD_NAME") from None
    if pod is None:
        raise UnknownContainer(f"pod {ns}/{name} is not known to the object source", "K8S_POD_NAME")
    return _same_uid(pod, uid)
