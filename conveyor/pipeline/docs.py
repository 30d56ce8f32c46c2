"""`conveyor docs`: the README's deploy section, written from the config committed at HEAD.

The section sits between two markers; everything outside them is the project's own and is left byte for
byte. The output depends on the config only (no dates, no SHAs), so `conveyor docs --check` in CI says
"stale" exactly when someone changed conveyor.yml without re-running `conveyor docs`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.errors import BadInput

if TYPE_CHECKING:
    from conveyor.config.models import AppConfig

START = "<!-- conveyor:docs:start -->"
END = "<!-- conveyor:docs:end -->"
README = "README.md"


@dataclass(frozen=True)
class DocsResult:
    path: Path
    changed: bool  # for --check: the section on disk differs from the config's


def render_section(config: AppConfig) -> str:
    """The deploy section for CONFIG, markers included, ending with a newline."""
    from conveyor.pipeline.templating import render

    stages = [_stage(config, index) for index in range(len(config.environments))]
    body = render("docs.md.j2", app=config.app, image=config.image, stages=stages, migrations=config.migrations,
                  refs=config.release_refs, ref_names=_ref_names(config),
                  notify=[destination.label for destination in config.notify.destinations],
                  github=config.forge.github, ci=config.ci, triggers=config.triggers, release_pr=config.release_pr)
    return f"{START}\n{body.strip()}\n{END}\n"


def _stage(config: AppConfig, index: int) -> dict[str, Any]:
    env = config.environments[index]
    settings = env.target.model_dump(mode="json", exclude_defaults=True, exclude={"type"})
    return {
        "name": env.name, "target": env.target.type,
        "settings": ", ".join(f"{key}: {_shown(value)}" for key, value in settings.items()),
        "source": env.policy.require_promotion_from, "queue": env.queue,
        "tasks": config.tasks_for(env), "registry": env.registry.image if env.registry else None,
        "secrets": env.secrets, "promoted_from": _promotion_source(config, index),
    }


def _promotion_source(config: AppConfig, index: int) -> str | None:
    """Where a stage's promotions come from: its policy's source, else the stage before it."""
    source = config.environments[index].policy.require_promotion_from
    return source or (config.environments[index - 1].name if index else None)


def _ref_names(config: AppConfig) -> list[str]:
    refs = config.release_refs
    named = ((refs.env_tag, "tag `{p}ENV`"), (refs.timestamp_tag, "tag `{p}ENV--YYYY-MM-DD--HH-MM-SS`"),
             (refs.env_branch, "branch `{p}ENV`"))
    return [text.format(p=refs.prefix) for enabled, text in named if enabled]


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{key} {item}" for key, item in value.items())
    return str(value)


def replace_section(readme: str, section: str, label: str) -> str:
    """README with its marked section replaced by SECTION (appended, markers and all, when it has none)."""
    span = find_section(readme, label)
    if span is None:
        separator = "" if not readme or readme.endswith("\n\n") else ("\n" if readme.endswith("\n") else "\n\n")
        return f"{readme}{separator}{section}"
    start, end = span
    return readme[:start] + section.rstrip("\n") + readme[end:]


def find_section(readme: str, label: str) -> tuple[int, int] | None:
    """Where the marked section is (from its start marker to the end of its end marker), or None when the
    README has no markers; half a pair, or more than one, is a mistake the user must fix by hand. A marker
    counts only alone on its line: a README may quote the markers in its text."""
    starts, ends = _marker_lines(readme, START), _marker_lines(readme, END)
    if not starts and not ends:
        return None
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise BadInput(f"{label}: expected one {START} line followed by one {END} line; fix the markers by hand")
    return starts[0], ends[0] + len(END)


def _marker_lines(readme: str, marker: str) -> list[int]:
    return [found.start() for found in re.finditer(rf"^{re.escape(marker)}[ \t]*$", readme, re.MULTILINE)]


def readme_for_head(start: Path, readme: Path | None, override: Path | None, *, check: bool) -> DocsResult:
    """`conveyor docs`: the config committed at HEAD of the repo START is in (or the --config override),
    written into README (default: README.md at the repo's root)."""
    from conveyor.pipeline.config_source import CommitConfig, OverrideConfig
    from conveyor.vcs.git import Repo

    repo = Repo.discover(start)
    source = OverrideConfig(override) if override is not None else CommitConfig(repo, repo.resolve("HEAD"))
    return write_docs(source.load(), readme if readme is not None else repo.path / README, check=check)


def write_docs(config: AppConfig, path: Path, *, check: bool) -> DocsResult:
    """Write (or, with CHECK, only compare) the deploy section of the README at PATH."""
    current = _read(path)
    updated = replace_section(current or "", render_section(config), str(path))
    changed = current != updated
    if changed and not check:
        try:
            path.write_text(updated)
        except OSError as exc:
            raise BadInput(f"{path}: cannot write it: {exc.strerror or type(exc).__name__}") from None
    return DocsResult(path, changed)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot read it: {getattr(exc, 'strerror', None) or type(exc).__name__}") from None
