"""Chat templates for SFT `messages` rows: which template renders a conversation, and which of its text is
the assistant's (the part that is trained).

`data.chat_template` chooses: `auto` (the tokenizer's own template when it has one, else `chatml`), a named
template (`chatml`, `alpaca`), or a path to a Jinja file (read when the data is read, so a trial on another
machine needs no copy of it). Each assistant turn's span is found by rendering the conversation prefix by
prefix: the text of messages[:i] with the generation prompt ends where assistant turn i starts, the text of
messages[:i+1] ends where it ends (its end-of-turn marker included).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}{% if not loop.first %}{{ '\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{% if messages %}{{ '\n' }}{% endif %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML (OpenAI, Qwen): `<|im_start|>role\\ncontent<|im_end|>`, one message a line. Its markers are plain
text to a tokenizer that does not know them (nothing is added to the vocabulary)."""

ALPACA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{% if not loop.first and messages[loop.index0 - 1]['role'] == 'assistant' %}"
    "{{ '\n\n' }}{% endif %}{{ '### Instruction:\n' + message['content'] + '\n\n### Response:\n' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)
"""Alpaca's instruction format as a conversation: a system message as a preamble, each user turn an
`### Instruction:` block, each assistant turn the response after `### Response:`, ended by the EOS token."""

TEMPLATES = {"chatml": CHATML, "alpaca": ALPACA}
"""The named templates of `data.chat_template`."""
SETTINGS = ("auto", *TEMPLATES)
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatTemplate:
    """The template that renders `messages` rows, and what names it on a trial."""

    name: str
    """tokenizer | chatml | alpaca | file"""
    source: str | None = None
    """The Jinja text; None for the tokenizer's own (read from the tokenizer when rendering)."""
    path: str = ""
    """A Jinja file's absolute path (`name` file)."""
    sha256: str = ""
    """The first 12 hex digits of the sha256 of the template's text."""

    def record(self) -> dict[str, str]:
        """What a trial records (metrics.json's `template`): the name, and for a file its path and hash."""
        out = {"name": self.name}
        if self.path:
            out["path"] = self.path
        if self.sha256:
            out["sha256"] = self.sha256
        return out


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def is_file_setting(value: str) -> bool:
    """A `data.chat_template` value that names a file rather than a template (a path, or a .jinja name)."""
    return value not in SETTINGS and ("/" in value or "\\" in value or value.endswith((".jinja", ".j2")))


def describe(record: dict[str, str]) -> str:
    """One line naming a recorded template: `chatml`, `file /x/t.jinja sha256:1a2b3c4d5e6f`, ..."""
    if not record:
        return ""
    words = [record.get("name", "")]
    if record.get("format"):
        words.append(f"({record['format']} rows)")
    if record.get("path"):
        words.append(record["path"])
    if record.get("sha256"):
        words.append(f"sha256:{record['sha256']}")
    return " ".join(w for w in words if w)


def load_setting(value: str) -> ChatTemplate | str:
    """`data.chat_template` as the tokenizer step needs it: `auto`, or the named or file template.

    Raises ValueError (the message says what was expected and found) for a file that cannot be read
    or is not a Jinja template; an unknown name is the config check's (`check_setting`).
    """
    if value == "auto":
        return value
    if value in TEMPLATES:
        return ChatTemplate(value, TEMPLATES[value])
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"expected a Jinja template file, found no file at '{path}'")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the template file '{path}': {exc}") from None
    _compile(text, str(path))
    return ChatTemplate("file", text, str(path), short_hash(text))


def check_setting(value: str) -> str | None:
    """What is wrong with a `data.chat_template` value (before any file is read), or None."""
    if value in SETTINGS or is_file_setting(value):
        return None
    from trainer.schema import did_you_mean

    return (
        f"expected auto, {', '.join(TEMPLATES)} or a path to a Jinja file (.jinja), found {value!r}"
        f"{did_you_mean(value, SETTINGS)}"
    )


def _compile(text: str, where: str) -> None:
    import jinja2

    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"'{where}' is not a valid Jinja template: line {exc.lineno}: {exc.message}") from None


def resolve(setting: ChatTemplate | str, tokenizer: Any) -> ChatTemplate:
    """The template `setting` means for this tokenizer (`auto`: its own when it has one, else chatml)."""
    if isinstance(setting, ChatTemplate):
        return setting
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, str) and own:
        return ChatTemplate("tokenizer", None, "", short_hash(own))
    return ChatTemplate("chatml", CHATML)


def check_roles(messages: list[dict[str, Any]]) -> str | None:
    """What is wrong with a conversation's roles, or None: an optional system message, then user and
    assistant turns alternating, starting with the user and ending with the assistant."""
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles and roles[0] == "system" else roles
    if "assistant" not in body:
        return f"expected at least one assistant turn, found roles {roles}"
    for i, role in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            at = i + (len(roles) - len(body))
            return (
                f"expected roles to alternate user/assistant after an optional first system message, "
                f"found {role!r} at message {at + 1} (roles {roles})"
            )
    if body[-1] != "assistant":
        return f"expected the last message to be the assistant's (it is trained on), found roles {roles}"
    return None


def render(template: ChatTemplate, tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template.source, tokenize=False, add_generation_prompt=generation_prompt
    )


def segments(template: ChatTemplate, tokenizer: Any, messages: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """The rendered conversation as consecutive (text, is_assistant) pieces whose texts join to the whole.

    Raises ValueError when the template does not render the conversation prefix by prefix (an earlier
    turn rendered differently once later turns follow), where no assistant span can be located.
    """
    full = render(template, tokenizer, messages, False)
    out: list[tuple[str, bool]] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(template, tokenizer, messages[:i], True)
        upto = render(template, tokenizer, messages[: i + 1], False)
        if not (upto.startswith(before) and full.startswith(upto) and len(before) >= cursor):
            raise ValueError(
                f"the chat template does not render this conversation turn by turn (the text up "
                f"to assistant message {i + 1} is not a prefix of the whole), so its assistant "
                "turns cannot be located; use data.chat_template: chatml, alpaca or your own file"
            )
        if len(before) > cursor:
            out.append((full[cursor : len(before)], False))
        out.append((full[len(before) : len(upto)], True))
        cursor = len(upto)
    if cursor < len(full):
        out.append((full[cursor:], False))
    return out
