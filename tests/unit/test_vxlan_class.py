"""A VXLAN class gives `remotes` (unicast head-end replication) or `group` (multicast), not both."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipamd.model.objects import API_VERSION, ManifestInvalid, parse_object

REPO = Path(__file__).resolve().parents[2]


def test_a_vxlan_class_with_both_remotes_and_a_group_is_refused() -> None:
    doc = {"apiVersion": API_VERSION, "kind": "NetworkClass", "metadata": {"name": "overlay"},
           "spec": {"vxlan": {"vniPool": ["5000-5999"], "remotes": ["198.18.0.2"], "group": "239.1.1.1"}}}
    with pytest.raises(ManifestInvalid) as info:
        parse_object(doc)
    assert info.value.field == "spec.vxlan.group"
    assert "remotes" in info.value.problem
