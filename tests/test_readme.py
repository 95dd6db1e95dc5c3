"""The README says what the code does: its memory-estimate snippet prints what the text shows and
predicts the chunked decode that generate() runs, and its errors section names every typed error
and exit code."""
import contextlib
import io
import re
import textwrap
from pathlib import Path

import stdit_engine.errors as errors
from stdit_engine.engine.memory import GIB, LEAN_RESERVED_BYTES, RESERVE_FACTOR

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_estimate_snippet_prints_what_the_text_shows():
    [snippet] = [block for block in re.findall(r"```python\n(.*?)```", README, re.S) if "estimate_memory(" in block]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(textwrap.dedent(snippet), {})
    line = printed.getvalue().strip()
    assert f"# {line}" in snippet  # the figures shown beside the snippet are the ones it prints
    peak = float(re.match(r"peak (\d+\.\d+) GiB", line).group(1)) * GIB
    # sequential is the least-memory placement: below lean's reserved target, decode included
    assert peak * RESERVE_FACTOR <= LEAN_RESERVED_BYTES


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
