# tinylm: raw text -> BPE tokenizers -> token arrays -> trained runs -> report sections.
#
#   snakemake                         # everything (target `all`), with config/config.yaml
#   snakemake lr_sweep                # one report section and only what it needs
#   snakemake --configfile config/reference.yaml
#
# Local settings come from profiles/default (loaded automatically); see config/README.md.
import os
import re
import shlex

import yaml
from snakemake.utils import min_version, update_config, validate

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config/config.yaml")


def typed(value):
    """`--config key={a: 3}` reads nested values as text; read them the way the YAML config file would."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, str):
        parsed = yaml.safe_load(value) if value.strip() else value
        return parsed if parsed is None or isinstance(parsed, (bool, int, float)) else value
    return value


update_config(config, typed(dict(workflow.config_settings.config)))
validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tokenizer.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


wildcard_constraints:
    run=RUN_PATTERN,
    corpus="|".join(map(re.escape, config["corpora"])),
    tok="|".join(map(re.escape, config["tokenizers"])),
    split="train|valid",


# Run beside Snakemake even under a cluster executor: targets, config files, and downloads
# (compute nodes often have no outside network).
localrules:
    all,
    write_run_config,
    download,
    tokenizer,
    lr_sweep,
    batch_size,
    generate,
    no_rmsnorm,
    post_norm,
    nope,
    silu,
    owt,


def section_target(section):
    """The section's report page, plus the evaluation of every run it shows."""
    def inputs(wildcards):
        return [f"{section_dir(section)}/section.md"] + section_run_files(section, kinds=("eval",))
    return inputs


rule all:
    default_target: True
    input:
        # One input function per section, so that only batch_size waits for the max-batch probe.
        [section_target(section) for section in SECTIONS],
        REPORT_INDEX,


rule tokenizer:
    input: section_target("tokenizer")


rule lr_sweep:
    input: section_target("lr_sweep")


rule batch_size:
    input: section_target("batch_size")


rule generate:
    input: section_target("generate")


rule no_rmsnorm:
    input: section_target("no_rmsnorm")


rule post_norm:
    input: section_target("post_norm")


rule nope:
    input: section_target("nope")


rule silu:
    input: section_target("silu")


rule owt:
    input: section_target("owt")
