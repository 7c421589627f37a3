"""python -m vos.app [--port 7860] [--out outputs/app] [--checkpoint C] [--max-upload-mb 500]"""

import argparse

from vos.app.server import create_app


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vos.app", description="Segment a video in your browser.")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--host", default="127.0.0.1", help="127.0.0.1 = this computer only")
    ap.add_argument("--out", default="outputs/app", help="the only folder the app writes to")
    ap.add_argument("--checkpoint")
    ap.add_argument("--max-upload-mb", type=int, default=500)
    a = ap.parse_args(argv)
    app = create_app(a.out, a.checkpoint, a.max_upload_mb)
    print(f"open http://{a.host}:{a.port}/ in a browser (Ctrl-C to stop)")
    app.run(host=a.host, port=a.port, threaded=True)


if __name__ == "__main__":
    main()
