"""Real servers the tests start: Glance (gunicorn + sqlite) and an EC2/S3 endpoint (moto).

Their virtualenvs are made by `make test` (target `components`) under `.components/`.
"""
