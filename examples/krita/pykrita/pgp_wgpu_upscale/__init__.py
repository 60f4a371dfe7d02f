"""Krita plug-in: Tools → Scripts → Upscale (pgp-wgpu). Upscales the active document into a new
one with a diffusion model on the GPU (the pgp_wgpu Python package, installed into the Python
Krita runs: `pip install ./crates/pgp-py`), with a progress dialog whose Cancel stops the run at
the next unit of work.

Install: copy pgp_wgpu_upscale/ and pgp_wgpu_upscale.desktop into Krita's pykrita folder
(Settings → Manage Resources → Open Resource Folder → pykrita) and enable the plug-in in
Settings → Configure Krita → Python Plugin Manager. The model is $PGP_WGPU_MODEL, else the
bundle `pgp-wgpu download osediff` made.
"""

try:
    from krita import Krita
except ImportError:  # imported outside Krita (tests, scripts): the pixel path only
    Krita = None

if Krita is not None:
    from .extension import PgpWgpuUpscale

    Krita.instance().addExtension(PgpWgpuUpscale(Krita.instance()))
