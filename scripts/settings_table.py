"""Every knob of the platform in one Markdown table, generated from the settings classes so the
README cannot drift from the code: `python scripts/settings_table.py` prints it, `--write` replaces
the table between the README's settings-table markers (tests/test_settings_table.py checks it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import BaseModel
from pydantic_settings import BaseSettings

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def settings_classes() -> list[tuple[str, type[BaseSettings]]]:
    from core.settings import Settings
    from serving.settings import ServingSettings

    return [("training, features, data (`core/settings.py`)", Settings),
            ("serving (`serving/settings.py`)", ServingSettings)]


def _default(field) -> str:
    if field.default_factory is not None:
        return "(derived)"
    value = field.default
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Path):
        return _repo_relative(value)
    if isinstance(value, tuple):
        value = list(value)
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _repo_relative(path: Path) -> str:
    root = README.parent
    if path == root:
        return "<repo>"
    return f"<repo>/{path.relative_to(root)}" if path.is_relative_to(root) else str(path)


def table() -> str:
    lines = []
    for title, cls in settings_classes():
        prefix = cls.model_config.get("env_prefix", "")
        lines += [f"**{title}**", "", "| variable | default | what it changes |", "| --- | --- | --- |"]
        for name, field in cls.model_fields.items():
            description = (field.description or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{prefix}{name.upper()}` | `{_default(field)}` | {description} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def readme_with_table(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    if parser.parse_args().write:
        README.write_text(readme_with_table(README.read_text()))
    else:
        print(table(), end="")


if __name__ == "__main__":
    main()
