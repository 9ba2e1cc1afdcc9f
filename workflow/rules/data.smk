# Raw text: one download job per (corpus, split). The source is a URL, a file in the mirror
# directory (config `mirror` or TINYLM_MIRROR), or a local path; see `tinylm download --help`.
# Where a file comes from is not part of its content: the mirror, cache folder and retries are a
# `params` entry the rerun trigger leaves out (a new mirror does not refetch anything).


rule download:
    output:
        download_path("{corpus}", "{split}"),
    params:
        # Tracked by the `params` rerun trigger: a new source, checksum or size refetches.
        source=download_source,
        fetch=download_fetch_options,
    log:
        log_path("download", "{corpus}-{split}"),
    resources:
        downloads=1,
    localrule: True  # compute nodes often have no outside network
    shell:
        "tinylm download {params.source} --out {output} {params.fetch} > {log} 2>&1"
