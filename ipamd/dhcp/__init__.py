"""The node's DHCP server for the guests of TAP interfaces (``ipAssignmentMode: DHCP``): the answers (``offers``),
their frames (``frames``) and the sockets that carry them (``server``)."""
