"""What every canarylab service shares.

One place for the runtime pieces both services need — configuration, tracing,
JSON errors, "who answered" headers, metrics, logging and gunicorn settings — so
that swapping the X-Ray SDK for OpenTelemetry one day changes one module
(`servicekit.tracing`), not two services.

Import from the modules (``servicekit.app``, ``servicekit.errors``...): this
package imports nothing itself, so ``servicekit.gunicorn_conf`` can set up the
metrics directory before prometheus_client is first imported.
"""
