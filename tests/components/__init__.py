"""Real servers the tests start: Glance (gunicorn + sqlite) and an EC2/S3 endpoint (moto).

Their virtualenvs are made by `make test` (target `components`) under `.components/`.
"""

import subprocess


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
