# Raw text: one download job per (corpus, split). The source is a URL, a file in the mirror
# directory (config `mirror` or TINYLM_MIRROR), or a local path; see `tinylm download --help`.
# Where a file comes from is not part of its content, so the mirror and cache directory are in the
# command line, not in `params` (a new mirror does not refetch anything).

DOWNLOAD_CACHE = shlex.quote(config["download"]["cache_dir"])
DOWNLOAD_RETRIES = config["download"]["retries"]
MIRROR_ARG = f"--mirror {shlex.quote(resolve_source(config['mirror']))}" if config.get("mirror") else ""


def download_params(wildcards):
    spec = config["corpora"][wildcards.corpus][wildcards.split]
    args = [resolve_source(spec["source"])]
    if spec.get("sha256"):
        args += ["--sha256", spec["sha256"]]
    if spec.get("max_bytes"):
        args += ["--max-bytes", str(spec["max_bytes"])]
    return " ".join(shlex.quote(a) for a in args)


rule download:
    output:
        download_path("{corpus}", "{split}"),
    params:
        # Tracked by the `params` rerun trigger: a new source, checksum or size refetches.
        source=download_params,
    log:
        log_path("download", "{corpus}-{split}"),
    resources:
        downloads=1,
    localrule: True  # compute nodes often have no outside network
    shell:
        "tinylm download {params.source} --out {output} --cache-dir {DOWNLOAD_CACHE}"
        " --retries {DOWNLOAD_RETRIES} {MIRROR_ARG} > {log} 2>&1"

