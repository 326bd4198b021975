"""``mspr-synth``: render the synthetic multi-scene world into datasets and a bag."""
import argparse
import sys

from mspr_training.synth.camera import wide_camera
from mspr_training.synth.generate import FORMATS, generate

BAG_CAMERA_HELP = (
    "record the bag through another camera than the datasets': 'wide' (a 400x300 plumb_bob "
    'lens spanning 90 deg, k1=-0.28 k2=0.07) or WxH:FOV[:k1,k2] (size, horizontal field of view '
    'in degrees of the distorted image, optional radial coefficients; without them a pinhole). '
    'Default: the dataset camera')


def parse_size(text):
    """Parse ``WIDTHxHEIGHT`` into (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must look like 320x240, got {text!r}') from None
    if width < 8 or height < 8:
        raise argparse.ArgumentTypeError(f'size must be at least 8x8, got {text!r}')
    return width, height


def parse_bag_camera(text):
    """Parse ``wide`` or ``WxH:FOV[:k1,k2]`` into a ``CameraModel`` (``BAG_CAMERA_HELP``)."""
    if text.strip().lower() == 'wide':
        return wide_camera()
    parts = text.split(':')
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        width, height = parse_size(parts[0])
        fov = float(parts[1])
        k1, k2 = (float(v) for v in parts[2].split(',')) if len(parts) == 3 else (0.0, 0.0)
        return wide_camera(width, height, fov, k1, k2)
    except (ValueError, argparse.ArgumentTypeError) as error:
        detail = f' ({error})' if str(error) else ''
        raise argparse.ArgumentTypeError(
            f"bag camera must be 'wide' or look like 640x480:100 or 640x480:100:-0.3,0.08, "
            f'got {text!r}{detail}') from None


def parse_formats(text):
    """Parse a comma separated list of output formats."""
    formats = tuple(f.strip() for f in text.split(',') if f.strip())
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise argparse.ArgumentTypeError(
            f'formats must be a comma separated subset of {",".join(FORMATS)}, got {text!r}')
    return formats


def build_parser():
    """Return the argument parser."""
    parser = argparse.ArgumentParser(
        prog='mspr-synth', description=__doc__.split(':', 1)[1].strip())
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--formats', type=parse_formats, default=FORMATS,
                        help='comma separated: cambridge,7scenes,bag (default: all)')
    parser.add_argument('--scenes', type=int, default=3, help='number of scenes (1..8)')
    parser.add_argument('--train-frames', type=int, default=300, help='train frames per scene')
    parser.add_argument('--test-frames', type=int, default=100, help='test frames per scene')
    parser.add_argument('--train-sequences', type=int, default=2,
                        help='train sequences per scene')
    parser.add_argument('--test-sequences', type=int, default=1, help='test sequences per scene')
    parser.add_argument('--site-frames', type=int, default=0,
                        help='frames per scene of a site split, walks drawn as the test ones, '
                             'for mspr-export --calibration-split site (default 0: none)')
    parser.add_argument('--site-sequences', type=int, default=1, help='site sequences per scene')
    parser.add_argument('--size', type=parse_size, default=(320, 240), help='WIDTHxHEIGHT')
    parser.add_argument('--fov', type=float, default=65.0, help='horizontal field of view, deg')
    parser.add_argument('--seed', type=int, default=0, help='world and path seed')
    parser.add_argument('--bag-storage', choices=('mcap', 'sqlite3'), default='mcap')
    parser.add_argument('--bag-rate', type=float, default=30.0,
                        help='frame rate of the bag stamps, Hz (5 gives a walking pace)')
    parser.add_argument('--bag-splits', type=lambda t: tuple(t.split(',')), default=('test',),
                        help='splits recorded in the bag, comma separated (default: test)')
    parser.add_argument('--bag-camera', type=parse_bag_camera, default=None,
                        metavar='wide|WxH:FOV[:k1,k2]', help=BAG_CAMERA_HELP)
    parser.add_argument('--test-conditions', choices=('shifted', 'same'), default='shifted',
                        help='test sequences under other light, exposure and camera height '
                             'than training (shifted, default) or drawn alike (same)')
    parser.add_argument('--preview', action='store_true',
                        help='also write DIR/preview.png, a contact sheet of every scene')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser


def main(argv=None):
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        manifest = generate(
            args.out, formats=args.formats, num_scenes=args.scenes,
            train_frames=args.train_frames, test_frames=args.test_frames,
            size=args.size, seed=args.seed, bag_storage=args.bag_storage,
            train_sequences=args.train_sequences, test_sequences=args.test_sequences,
            bag_splits=args.bag_splits, horizontal_fov_deg=args.fov, preview=args.preview,
            progress=not args.quiet, bag_rate_hz=args.bag_rate,
            test_conditions=args.test_conditions, bag_camera=args.bag_camera,
            site_frames=args.site_frames, site_sequences=args.site_sequences)
    except (ValueError, FileExistsError) as error:
        print(f'mspr-synth: error: {error}', file=sys.stderr)
        return 2
    state = 'reused cached' if manifest.cached else f'rendered in {manifest.seconds:.1f} s:'
    totals = ', '.join(f'{scene} ' + '+'.join(str(n) for n in c.values())
                       for scene, c in manifest.counts.items())
    print(f'mspr-synth: {state} {", ".join(manifest.outputs)} in {args.out} ({totals})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
