"""The original developer's mock analytics server (reference: atomic-scan-protocol.md §3,
`app.py`): echoes the registration. Used as the baseline in bench/serve.sh."""
from flask import Flask, abort, jsonify, request

app = Flask(__name__)


@app.route("/api/v1/register", methods=["POST"])
def register():
    if not request.json:
        abort(400)
    return jsonify({
        "email-ids": request.json.get("email-ids", "email ids not given"),
        "git-sha": request.json.get("git-sha", "git sha not given"),
        "git-url": request.json.get("git-url", "git url not given"),
    })


@app.route("/api/v1/scanner-error", methods=["POST"])
def scanner_error():
    if not request.json:
        abort(400)
    return jsonify({
        "email-ids": request.json.get("email-ids", "email ids not given"),
        "image-name": request.json.get("image-name", "image name not given"),
        "error": request.json.get("error", "error not given"),
    })


if __name__ == "__main__":
    import sys
    app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
