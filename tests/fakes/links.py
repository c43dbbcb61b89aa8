"""Node links as a dict: what ``Segments`` asked the kernel for, and what it removed."""

from __future__ import annotations

from cni.errors import InterfaceFailure
from ipamd.model.names import uplink_name
from ipamd.model.objects import VxlanSpec
from ipamd.model.segments import SegmentInUse


class FakeNodeLinks:
    def __init__(self) -> None:
        self.links: dict[str, dict[str, object]] = {}  # name -> what it is (kind, master, ...)
        self.calls: list[tuple[str, ...]] = []
        self._next = 10
        self.mtus: dict[int, int] = {}  # bridge index -> MTU (its uplink's); 1500 unless a test says otherwise

    def ensure_bridge(self, name: str, uplink: str, busy: bool = False) -> int:
        self.calls.append(("bridge", name, uplink))
        if name not in self.links:
            self._next += 1
            self.links[name] = {"kind": "bridge", "index": self._next}
        if uplink:
            master = str(self.links.get(uplink, {}).get("master") or "")
            if master and master != name:  # as ``segment_links.ensure_bridge`` refuses it: another bridge's, a bond's
                raise InterfaceFailure(f"{uplink} is already a port of {master}", "parentNodeNetworkInterfaces")
            nics = [n for n, link in self.links.items() if link.get("master") == name and n != uplink
                    and not n.startswith("plx")]
            if master != name and nics and busy:  # as ``segment_links`` leaves it under pods that are no port
                raise SegmentInUse(f"bridge {name} has {nics[0]} as its uplink, and pods", "parentNodeNetworkInterfaces")
            if master != name and nics:  # a bridge has one uplink NIC
                raise InterfaceFailure(f"bridge {name} already has {nics[0]} as its uplink", "parentNodeNetworkInterfaces")
            self.links.setdefault(uplink, {"kind": "nic"})["master"] = name
        return int(str(self.links[name]["index"]))

    def ensure_vlan(self, parent: str, vlan_id: int, busy: bool = False) -> str:
        self.calls.append(("vlan", parent, str(vlan_id)))
        name = uplink_name("vlan", vlan_id)
        if busy and self.links.get(name, {}).get("parent", parent) != parent:  # not made again under pods
            raise SegmentInUse(f"{name} is on another parent, and pods", "parentNodeNetworkInterfaces")
        self.links[name] = {"kind": "vlan", "parent": parent, "id": vlan_id}
        return name

    def ensure_vxlan(self, vni: int, spec: VxlanSpec, busy: bool = False) -> str:
        self.calls.append(("vxlan", str(vni), spec.underlay))
        name = uplink_name("vxlan", vni)
        self.links[name] = {"kind": "vxlan", "vni": vni, "remotes": spec.remotes}  # its flood list, exactly
        return name

    def index(self, name: str) -> int | None:
        link = self.links.get(name)
        return int(str(link["index"])) if link and "index" in link else None

    def mtu(self, index: int) -> int:
        return self.mtus.get(index, 1500)

    def delete(self, name: str) -> bool:
        self.calls.append(("delete", name))
        return self.links.pop(name, None) is not None
