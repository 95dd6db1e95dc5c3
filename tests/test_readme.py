"""The README says what the code does: its memory-estimate snippet agrees with the text around it, and
its errors section names every typed error and exit code."""
import contextlib
import io
import re
import textwrap
from pathlib import Path

import stdit_engine.errors as errors

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_estimate_snippet_agrees_with_the_text():
    [snippet] = [block for block in re.findall(r"```python\n(.*?)```", README, re.S) if "estimate_memory(" in block]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(textwrap.dedent(snippet), {})
    peak = float(re.match(r"peak (\d+\.\d+) GiB", printed.getvalue()).group(1))
    assert peak <= 5.5  # the text: sequential fits every preset in about 5.5 GiB
    assert f"peak {peak:.2f} GiB" in snippet  # the figure shown beside the snippet is the one it prints


def test_errors_section_names_every_typed_error_and_exit_code():
    section = README.split("## Errors and exit codes", 1)[1].split("\n## ", 1)[0]
    typed = [name for name, value in vars(errors).items()
             if isinstance(value, type) and issubclass(value, (errors.EngineError, Warning))
             and value.__module__ == errors.__name__]
    assert len(typed) >= 6
    for name in typed:
        assert f"`{name}`" in section, name
    for code in ("**0**", "**2**", "**130**"):
        assert code in section
