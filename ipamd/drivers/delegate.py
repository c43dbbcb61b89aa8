"""``delegate``: an interface another CNI plugin builds (a NetworkAttachmentDefinition, the cluster network).

The exact configuration list, runtime configuration, arguments and environment the plugins get are
planned into the record before the first exec (``Invocation``), and the result they return is added to
it, so DEL, CHECK and GC run them again with nothing but the record: a NAD, a file or a pod that is gone
or changed makes no difference (DANM's leak, Multus's delegate cache). A failed or timed-out ADD is
undone by a DEL of the whole list, as a runtime does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import threading
from collections.abc import Collection, Iterable
from dataclasses import replace
from typing import Any

from cni.errors import CniError, InterfaceFailure
from cni.types import Result, Route
from ipamd.drivers.base import BuildContext, Built, InterfaceKey, InterfaceRequest, LinksContext, Plan, quietly
from ipamd.invoke.chain import Chain, Invocation
from ipamd.invoke.exec import PluginFailed
from ipamd.netlink import default_route
from ipamd.netlink.links import any_address, family_of
from ipamd.store.records import BuiltInterface

log = logging.getLogger(__name__)


def _invocation(iface: BuiltInterface) -> Invocation:
    return Invocation.from_dict(iface.driver["invocation"])


def _pod_mac(result: dict[str, Any], if_name: str) -> str:
    return next((str(i.get("mac", "")) for i in result.get("interfaces") or []
                 if i.get("sandbox") and i.get("name") == if_name), "")


def _failed(iface: BuiltInterface, verb: str, exc: CniError) -> CniError:
    """The delegate's error with its code, naming the network and the interface; what the plugin wrote on
    stderr (or printed when it broke) goes to the log and the events, not into the CNI answer."""
    note = exc.note or (exc.details if isinstance(exc, PluginFailed) else "")
    if note:
        log.warning("%s of %s (%s) failed: %s; it said: %s", verb, iface.network_name, iface.if_name, exc.msg, note)
    err = CniError.from_dict({"code": exc.code, "msg": f"{iface.network_name} ({iface.if_name}): {exc.msg}",
                              "details": "its output is in the plexus-ipamd log" if isinstance(exc, PluginFailed)
                              else exc.details})
    err.note = note
    return err


def _plugins_key(plugins: list[dict[str, Any]]) -> str:
    """What makes two lists of plugins one for GC: the plugins as configured, but for the ``static`` IPAM section
    the daemon writes per attachment (``delegateIPAM: lease``), which GC does not read."""
    def plain(plugin: dict[str, Any]) -> dict[str, Any]:
        ipam = plugin.get("ipam")
        return {**plugin, "ipam": {"type": "static"}} if isinstance(ipam, dict) and ipam.get("type") == "static" \
            else plugin
    return json.dumps([plain(p) for p in plugins], sort_keys=True)


GcKey = tuple[str, str]  # a configuration as GC tells it: its name, and its plugins (``_plugins_key``)


def _gc_key(inv: Invocation) -> GcKey:
    return str(inv.conflist["name"]), _plugins_key(inv.conflist["plugins"])


USED_CONFIGURATIONS_FILE = "delegate-configurations.json"


def used_configurations_path(db: str) -> str:
    """Beside the node's store (a hostPath in the DaemonSet: it outlives the daemon's container, as the records
    naming the rest do); none for a store in memory."""
    return "" if db in ("", ":memory:") else os.path.join(os.path.dirname(os.path.abspath(db)), USED_CONFIGURATIONS_FILE)


class UsedConfigurations:
    """The delegate configurations run on this node since a GC telling them that no attachment is left succeeded.
    GC reaches each one after its last attachment's record went too: what its plugins still hold for attachments
    gone without a DEL that let go (a failed ADD whose rollback DEL failed as well is forgotten, a plugin may keep
    something its DEL should have freed) is let go then (CNI 1.1: all that is not listed), and never for a
    configuration not run here. Kept in ``path`` (JSON, replaced whole) when given, so a daemon restarted before that
    GC still makes it; else for the daemon's life. Only those that get GC (CNI 1.1.0 on) are kept."""

    def __init__(self, path: str = "") -> None:
        self.path = path
        self._lock = threading.Lock()
        self._used: dict[GcKey, Invocation] = self._load()

    def note(self, inv: Invocation) -> None:
        """``inv``'s configuration is run here (kept without what names an attachment: GC is about none)."""
        key = _gc_key(inv)
        with self._lock:
            if key in self._used or inv.version < (1, 1, 0):
                return
            self._used[key] = Invocation(inv.conflist, "", "", "", bin_dirs=inv.bin_dirs, timeout_s=inv.timeout_s)
            self._save()

    def configurations(self) -> dict[GcKey, Invocation]:
        with self._lock:
            return dict(self._used)

    def forget(self, keys: Collection[GcKey]) -> None:
        """Those a GC told that no attachment is left, which succeeded: nothing of theirs is held any more."""
        with self._lock:
            gone = [k for k in keys if self._used.pop(k, None) is not None]
            if gone:
                self._save()

    def _load(self) -> dict[GcKey, Invocation]:
        if not self.path or not os.path.exists(self.path):
            return {}
        try:
            with open(self.path, encoding="utf-8") as f:
                invs = [Invocation.from_dict(d) for d in json.load(f)["configurations"]]
            return {_gc_key(inv): inv for inv in invs}
        except (OSError, ValueError, KeyError, TypeError) as exc:  # started afresh: the records name the rest
            log.warning("the delegate configurations used, in %s, are unreadable (%s): GC reaches only those of "
                        "the attachments recorded", self.path, exc)
            return {}

    def _save(self) -> None:
        """Written whole, then renamed over the old (never half a file). A failure is logged: the ADD or GC that
        changed the set has done its work, and the set in memory still holds."""
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"configurations": [inv.to_dict() for inv in self._used.values()]}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("keeping the delegate configurations used in %s: %s", self.path, exc)


def _default_dst(dst: Any) -> str:
    """A default route's destination as ``InterfaceRequest.defaults_moved`` names it ("0.0.0.0/0", "::/0"), however
    it is written; "" for any other route."""
    try:
        net = ipaddress.ip_network(str(dst), strict=False)
    except ValueError:
        return ""
    return ("0.0.0.0/0" if net.version == 4 else "::/0") if net.prefixlen == 0 else ""


def _routes_kept(routes: Any, moved: Collection[str]) -> list[Any]:
    return [r for r in routes or () if not (isinstance(r, dict) and _default_dst(r.get("dst")) in moved)]


def _as_the_pod_has_it(result: dict[str, Any], moved: Collection[str], gateways: Iterable[str]) -> dict[str, Any]:
    """The delegate's result as recorded for CHECK and DEL (their ``prevResult``): without the pod's default routes
    of the families that an interface of the attachment took (NPWG ``default-route``: the kernel's are gone), with
    this interface's own routes through ``gateways``, as Multus edits libcni's cache (``DeleteDefaultGWCache``,
    ``AddDefaultGWCache``): a plugin's CHECK may look for each route it is told of (the reference ones look for a
    default route of the family, whatever its gateway). In the result's own version and shape (0.1.0 and 0.2.0
    keep routes per family, in ``ip4`` and ``ip6``)."""
    if not moved:
        return result
    own = [{"dst": "::/0" if ":" in gw else "0.0.0.0/0", "gw": gw} for gw in gateways]
    if ("ip4" in result or "ip6" in result) and "ips" not in result:
        out = dict(result)
        for key, dst in (("ip4", "0.0.0.0/0"), ("ip6", "::/0")):
            section = result.get(key)
            if isinstance(section, dict):
                routes = _routes_kept(section.get("routes"), moved) + [r for r in own if r["dst"] == dst]
                out[key] = {**section, "routes": routes} if routes or "routes" in section else section
        return out
    routes = _routes_kept(result.get("routes"), moved) + own
    return {**result, "routes": routes} if routes or "routes" in result else result


def _give_back(ctx: BuildContext, if_name: str, taken: list[default_route.Taken]) -> None:
    """The undo of a default route taken, on the pod socket of the thread that runs it (fetched now)."""
    if taken:
        default_route.give_back(ctx.pod.netlink(), if_name, taken)


def _to_be_taken(pod: Any, gateways: Iterable[str]) -> list[default_route.Taken]:
    """The default routes ``set_default_route`` is about to replace, as it will say them (read before it does)."""
    families = [(gw, family_of(gw)) for gw in gateways]
    return [default_route.Taken(f"{any_address(family)}/0", gw, tuple(default_route.defaults(pod, family)))
            for gw, family in families]


def _took(taken: list[default_route.Taken]) -> dict[str, Any]:
    """The driver state that lets DEL give the default routes back (none when none were taken)."""
    return {"defaultRouteTaken": [t.to_dict() for t in taken]} if taken else {}


def _default_route_back(ctx: LinksContext, iface: BuiltInterface) -> None:
    """After the delegate's DEL: the default route its interface took given back (a network unplugged from a
    running pod leaves it the cluster network's route, as before the ADD). Best effort: the DEL has succeeded, and a
    pod whose namespace is gone has no route to give back."""
    taken = [default_route.Taken.from_dict(t) for t in iface.driver.get("defaultRouteTaken") or ()]
    pod = ctx.pod_netlink() if taken else None
    if pod is None:
        return
    try:
        default_route.give_back_after_del(pod, iface.if_name, taken)
    except Exception as exc:  # logged: the routes are the pod's convenience, the DEL is done
        log.warning("giving the pod's default route back after the DEL of %s (%s): %s", iface.network_name,
                    iface.if_name, exc)


class DelegateDriver:
    kind = "delegate"

    def __init__(self, chain: Chain, used: UsedConfigurations | None = None) -> None:
        self.chain = chain
        self.used = used if used is not None else UsedConfigurations()

    def plan(self, key: InterfaceKey, request: InterfaceRequest) -> Plan:
        if request.delegate is None:
            raise InterfaceFailure(f"{request.if_name}: a delegated interface needs its plugins", "delegate")
        moved = {"defaultsMoved": list(request.defaults_moved)} if request.defaults_moved else {}
        return Plan("", True, request.mac, {"invocation": request.delegate.to_dict(),
                                           "defaultRoute": list(request.default_route), **moved})

    def build(self, ctx: BuildContext, iface: BuiltInterface, undo: contextlib.ExitStack) -> Built:
        inv = _invocation(iface)
        self.used.note(inv)  # before its first exec: from then on its plugins may hold something
        answered: list[dict[str, Any]] = []  # each plugin's result, as it answers
        undo.callback(quietly, f"delegate {iface.network_name} ({iface.if_name})", self._undo, ctx, iface, answered)
        try:
            for step in self.chain.add_each(inv):
                answered.append(step)
        except CniError as exc:
            raise _failed(iface, "ADD", exc) from None
        result = answered[-1] if answered else {"cniVersion": inv.conflist["cniVersion"]}
        gateways = iface.driver.get("defaultRoute") or []
        moved = iface.driver.get("defaultsMoved") or []
        try:
            share = Result.from_dict(_as_the_pod_has_it(result, moved, ()))
        except CniError as exc:
            raise _failed(iface, "ADD", exc) from None
        recorded = _as_the_pod_has_it(result, moved, gateways)
        # stored before the routes are touched: a daemon killed before the commit leaves the DEL that undoes the ADD
        # the result (``firewall`` removes its rules by it) and the routes to give back
        ctx.keep_state({"result": recorded, **_took(_to_be_taken(ctx.pod.netlink(), gateways) if gateways else [])})
        taken: list[default_route.Taken] = []
        if gateways:
            taken = default_route.set_default_route(ctx.pod.netlink(), iface.if_name, gateways)
            undo.callback(quietly, "default route", _give_back, ctx, iface.if_name, taken)
            # the result says where the pod's default route now is
            share = replace(share, routes=share.routes + tuple(Route("::/0" if ":" in gw else "0.0.0.0/0", gw)
                                                               for gw in gateways))
        return Built(_pod_mac(result, iface.if_name), share, {**iface.driver, "result": recorded, **_took(taken)})

    def _undo(self, ctx: BuildContext, iface: BuiltInterface, added: list[dict[str, Any]]) -> None:
        """A DEL of the list, with its result so far (the last answer: each plugin's carries those before it), as
        Multus gives a delegate it rolls back: a plugin such as ``firewall`` removes what ``prevResult`` names, and
        one that answered before a later plugin failed holds what it set up all the same. A plugin whose ADD had
        answered and whose DEL fails leaves the interface to the runtime's DEL (``not_undone``): forgotten, what it
        holds would leak for good. One whose ADD failed too holds nothing it answered for (a missing binary, a plugin
        that fails every call): its failed DEL is logged, as Multus does, and never holds the pod's DEL up."""
        inv = _invocation(iface)
        so_far = added[-1] if added else None
        failed = self.chain.delete_each(inv, so_far)
        if not failed:
            return
        if any(i < len(added) for i, _ in failed):
            ctx.not_undone(replace(iface, driver={**iface.driver, "result": so_far}) if so_far is not None else iface)
        raise InterfaceFailure(f"DEL of {iface.network_name} ({iface.if_name}) failed",
                               "; ".join(f"{inv.conflist['plugins'][i]['type']}: {exc}" for i, exc in failed))

    def foresee(self, iface: BuiltInterface, sandbox: str) -> Built | None:
        return None  # the delegated plugins' result: known once they have run

    def teardown(self, ctx: LinksContext, iface: BuiltInterface) -> None:
        inv = _invocation(iface)
        self.used.note(inv)  # an attachment recorded before a restart: GC'd once it is gone, as one ADDed since
        errors = self.chain.delete(inv, iface.driver.get("result"), ctx.netns)
        if errors:
            raise InterfaceFailure(f"DEL of {iface.network_name} ({iface.if_name}) failed", "; ".join(errors))
        _default_route_back(ctx, iface)

    def cut_off(self, ctx: LinksContext, iface: BuiltInterface) -> bool:
        return False  # removed before DEL answers

    def check(self, ctx: LinksContext, iface: BuiltInterface) -> list[str]:
        try:
            self.chain.check(_invocation(iface), iface.driver.get("result"))
        except CniError as exc:
            return [str(_failed(iface, "CHECK", exc))]  # named once, with the plugin's details
        return []

    def collect(self, kept: list[BuiltInterface]) -> None:
        """Forward GC to every configuration delegated to (each distinct list of plugins) that is still recorded or
        was run here since a GC told it nothing is left (``UsedConfigurations``), with the attachments still valid
        of its network name: two NADs' configurations may share a name (NPWG gives a configuration without one its
        NAD's), and the plugins keep their state by that name (host-local's directory), so neither may be told the
        other's attachments are gone. One told that none is left is forgotten once its GC succeeds."""
        by_name: dict[str, list[dict[str, str]]] = {}
        lists: dict[GcKey, Invocation] = {}
        for iface in kept:
            inv = _invocation(iface)
            self.used.note(inv)
            by_name.setdefault(str(inv.conflist["name"]), []).append({"containerID": inv.container_id,
                                                                      "ifname": inv.ifname})
            lists.setdefault(_gc_key(inv), inv)
        for key, inv in self.used.configurations().items():
            lists.setdefault(key, inv)
        emptied: list[GcKey] = []
        for (name, plugins), inv in lists.items():
            valid = by_name.get(name, [])
            try:
                self.chain.gc(inv, valid)
            except CniError as exc:
                log.warning("GC of %s: %s", name, exc)
                continue
            if not valid:
                emptied.append((name, plugins))
        self.used.forget(emptied)
