"""Operations: what people ask of a KB (status, search, estimate), and rehearsals (drill),
runbook and report."""
