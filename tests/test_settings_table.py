"""Every setting is documented, in one README table generated from the settings classes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "settings_table.py"


def _generator():
    spec = importlib.util.spec_from_file_location("settings_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_has_a_description():
    generator = _generator()
    undocumented = [f"{cls.__name__}.{name}" for _, cls in generator.settings_classes()
                    for name, field in cls.model_fields.items() if not field.description]
    assert undocumented == []


def test_the_readme_table_is_the_generated_one():
    generator = _generator()
    readme = generator.README.read_text()
    assert generator.START in readme and generator.END in readme
    assert readme == generator.readme_with_table(readme), "run: python scripts/settings_table.py --write"
