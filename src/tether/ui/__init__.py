"""Web page for blind side-by-side judging (``tether label``) and the ``human`` judge.

Modules: ``inputs`` (JSONL rows -> comparisons), ``store`` (SQLite), ``app`` (routes),
``security`` (host, origin and header checks), ``agreement`` (kappa), ``export`` (preference
JSONL, win-rate summary), ``server`` (uvicorn), ``human_judge``, ``cli``.
"""
