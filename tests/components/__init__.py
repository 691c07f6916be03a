"""Real servers the tests start: Glance (gunicorn + sqlite), an EC2/S3 endpoint (moto),
OpenStack Swift (its S3 API) and HAProxy.

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
