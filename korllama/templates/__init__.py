"""The jinja2 templates of the pages korllama writes (report.html.j2, model_card.md.j2), shipped in the package.

The Python side prepares plain data (already-formatted strings where the formatting is subtle); the templates lay it
out. HTML is autoescaped, Markdown is not; trim_blocks and lstrip_blocks keep block tags' own lines out of the pages.
"""

from __future__ import annotations

from functools import cache

import jinja2


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("korllama", "templates"),
                              autoescape=jinja2.select_autoescape(["html.j2"], default_for_string=False,
                                                                  default=False),
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                              undefined=jinja2.StrictUndefined)


def render(name: str, /, **data) -> str:
    """Template `name` of this folder filled with `data`."""
    return environment().get_template(name).render(**data)
