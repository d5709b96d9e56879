"""MkDocs hooks: the pages generated at build time, so that they never drift from the code and
the results: the command line (from `kip.cli_args.parser`), the evaluation protocols (from the
protocol cards) and the results (from results/*.json and the tables written beside them)."""

from __future__ import annotations

import glob
import json
import os
import re

from mkdocs.structure.files import File

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tools/ -> the repository
HELP_COLUMNS = "100"  # argparse wraps to $COLUMNS: fixed, so the page is the same on every machine


def cli_page() -> str:
    os.environ["COLUMNS"] = HELP_COLUMNS
    from kip import cli_args

    parser = cli_args.parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    parts = ["# Command line\n", "Generated from the parser (`kip --help`, `kip COMMAND --help`).\n",
             "```text\n" + parser.format_help() + "```\n"]
    for name, p in sub.choices.items():
        parts.append(f"## kip {name}\n\n```text\n{p.format_help()}```\n")
    return "\n".join(parts)


def protocols_page() -> str:
    from kip import protocols

    parts = ["# Evaluation protocols\n", "The named finite-network protocols (`kip protocols NAME`), read from "
             "their cards in `kip/protocol_cards/`: a number means little without its protocol.\n",
             "```text\n" + protocols.listing(None) + "\n```\n"]
    for path in sorted(glob.glob(os.path.join(ROOT, "kip", "protocol_cards", "*.toml"))):
        name = os.path.basename(path)[: -len(".toml")]
        parts.append(f"## {name}\n\n```text\n{protocols.listing(name)}\n```\n")
    return "\n".join(parts)


def results_page() -> tuple[str, list[str]]:
    """The page, and the figures it shows (results/NAME.png)."""
    parts = ["# Reproducing the papers\n",
             "Every results file of the repository (`results/NAME.json`, with the table its script wrote beside it "
             "as `results/NAME.md`): the command that made it, the machine, the commit, then the table.\n"]
    figures = []
    paths = sorted(glob.glob(os.path.join(ROOT, "results", "*.json")))
    smoke = [p for p in paths if "_quick" in os.path.basename(p)]  # --quick runs: they check a pipeline, not a method
    for path in [p for p in paths if p not in smoke] + smoke:
        if path == (smoke or [None])[0]:
            parts.append("# Smoke runs (--quick)\n\nThe experiment scripts' quick modes on the embedded digits, as CI "
                         "runs them: they check the pipeline, not the methods.\n")
        name = os.path.basename(path)[: -len(".json")]
        md = path[: -len(".json")] + ".md"
        if not os.path.exists(md):
            continue
        meta = json.load(open(path))
        text = open(md).read()
        text = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)  # one level down
        for png in re.findall(r"\]\(([\w.-]+\.png)\)", text):
            figures.append(png)
        text = re.sub(r"\]\(([\w.-]+\.png)\)", r"](results/\1)", text)
        text = re.sub(r"\]\((?!results/)([^)]+\.(?:md|json))\)", r"]", text)  # links between results files: plain text
        commit = (meta.get("machine") or {}).get("commit", "?")
        parts.append(f"<a id='{name}'></a>\n{text.rstrip()}\n\n*results/{name}.json, commit {commit}*\n")
    return "\n".join(parts), figures


def on_files(files, config):
    add = lambda uri, content: files.append(File.generated(config, uri, content=content))
    add("cli.md", cli_page())
    add("protocols.md", protocols_page())
    page, figures = results_page()
    add("results.md", page)
    for png in sorted(set(figures)):
        path = os.path.join(ROOT, "results", png)
        if os.path.exists(path):
            add(f"results/{png}", open(path, "rb").read())
    return files
