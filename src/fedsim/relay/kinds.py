"""The kinds of message the relay carries and the headers that describe a delivered one: one
place, so the relay and the agents agree (and the agent need not import the server)."""

from __future__ import annotations

APP_KIND = "app"
"""An app's own message."""
SHARE_KIND = "smpc-share"
"""A secret share of a site's value, sent by its agent to one share holder."""
PARTIAL_KIND = "smpc-partial"
"""A share holder's partial sum; only the coordinator adds these up."""

KINDS = frozenset({APP_KIND, SHARE_KIND, PARTIAL_KIND})
COORDINATOR_ONLY_KINDS = frozenset({PARTIAL_KIND})
"""Kinds whose only legitimate receiver is the coordinator: anything else is a forgery."""

SENDER_HEADER = "X-Fedsim-Sender"
KIND_HEADER = "X-Fedsim-Kind"
MEMO_HEADER = "X-Fedsim-Memo"
MESSAGE_ID_HEADER = "X-Fedsim-Message-Id"
"""Which message this is (its row in the traffic): the agent acknowledges it by this id."""
