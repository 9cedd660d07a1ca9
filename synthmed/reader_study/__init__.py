"""Blinded reader studies (visual Turing tests): build a study folder with an offline form, analyse the answers.

Modules, imported downward only: `stats` (pure statistics) -> `study` (the blinded folder, the key, the form) ->
`analysis` (responses unblinded into numbers) -> `report` (md/html/json) -> `command` (the CLI, MLflow, the run's
images).
"""
