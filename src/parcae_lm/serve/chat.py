"""The chat template for base models: plain role-labelled turns, ending with the assistant's cue.

    System: You are terse.

    User: What is a looped language model?

    Assistant:

A base model trained on plain text has no chat format of its own; this one reads like a transcript, which
such models continue naturally. Generation stops where the model starts the next user turn
(`CHAT_STOP`). Roles: system, user, assistant (OpenAI's names).
"""

from __future__ import annotations

from collections.abc import Sequence

ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
CHAT_STOP = ["\nUser:", "\nSystem:"]


def render_chat(messages: Sequence[tuple[str, str]]) -> str:
    """(role, content) turns as one prompt ending with "Assistant:" (the model writes the reply)."""
    turns = [f"{ROLES[role]}: {content.strip()}" for role, content in messages]
    return "\n\n".join([*turns, f"{ROLES['assistant']}:"])
