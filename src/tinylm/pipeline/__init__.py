"""The experiment pipeline in plain Python: what a config means (`config`), how config values name
runs (`naming`), every run and report section it asks for (`plan`), where results go (`paths`),
`tinylm plan` (`plan_command`) and the quiet `make run` front end (`quiet`). The Snakefile and the
rule files read these; nothing here runs Snakemake itself except `quiet`."""
