# tinylm: raw text -> BPE tokenizers -> token arrays -> trained runs -> report sections.
#
#   snakemake                                      # everything (target `all`), config/config.yaml
#   snakemake lr_sweep                             # one report section and only what it needs
#   snakemake export                               # the sampled models as Hugging Face folders
#   snakemake --configfile config/reference.yaml   # that config alone (nothing else is read), into
#                                                  # results/reference/ (config/config.yaml: results/)
#   tinylm plan --configfile config/reference.yaml # the runs it would train, before any of them
#
# Local settings come from profiles/default (loaded automatically); see config/README.md.
# Functions live in workflow/rules/common.smk; the other rule files hold rules.
import os
import re

from snakemake.utils import min_version
from tinylm.pipeline.config import DEFAULT_CONFIGFILE, resolve_config

# The upper bound is pyproject.toml's: `workflow.config_settings` below is semi-internal, and
# tests/pipeline/test_snakemake.py checks it for the versions the lock installs.
min_version("9.0")

# A config means exactly what it says: the --configfile files (else the default), then --config,
# then the schema's defaults. No `configfile:` directive, which would merge the default underneath.
_configfiles = workflow.config_settings.configfiles or [os.path.join(workflow.basedir, DEFAULT_CONFIGFILE)]
_resolved = resolve_config(_configfiles, dict(workflow.config_settings.config))
config.clear()
config.update(_resolved)

# Rules call `tinylm ...`, found on PATH (common.smk puts the running Python's bin folder first);
# declared, so that executors pass it on to their jobs.
envvars:
    "PATH",


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tokenizer.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/export.smk"


wildcard_constraints:
    run=RUN_NAME_PATTERN,
    corpus="|".join(map(re.escape, config["corpora"])),
    tok="|".join(map(re.escape, config["tokenizers"])),
    split="train|valid",


rule all:
    default_target: True
    localrule: True
    input:
        # Input functions per section, so that only what the probe or refinement adds waits for them.
        [section_target(name) for name in PLAN.sections],
        REPORT_INDEX,
        rules.export.input,


# One target per report section, named after it: `snakemake lr_sweep`, `snakemake nope`, ...
for _name in PLAN.sections:
    rule:
        name:
            _name
        localrule: True
        input:
            section_target(_name),
