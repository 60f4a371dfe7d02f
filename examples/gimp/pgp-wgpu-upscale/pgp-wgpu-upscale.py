#!/usr/bin/env python3
"""GIMP 3 plug-in: Filters → Enhance → Upscale (pgp-wgpu). Upscales the active layer's image
with a diffusion model on the GPU (pgp_wgpu: `pip install ./crates/pgp-py` into the Python
GIMP runs) and scales the image to match. The progress bar is GIMP's; cancelling it stops the
run at the next unit of work.

Install: copy this folder (pgp-wgpu-upscale/, both files) into GIMP's plug-ins folder
(Edit → Preferences → Folders → Plug-ins) and make this file executable. The model is
$PGP_WGPU_MODEL, else the bundle `pgp-wgpu download osediff` made.
"""

import sys

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, GLib, GObject  # noqa: E402

import pgp_wgpu_pixels  # noqa: E402  (beside this file)

PROC = "plug-in-pgp-wgpu-upscale"


def run(procedure, run_mode, image, drawables, config, data):
    scale = config.get_property("scale")
    layer = drawables[0]
    bits = 16 if image.get_precision() not in (
        Gimp.Precision.U8_LINEAR, Gimp.Precision.U8_NON_LINEAR, Gimp.Precision.U8_PERCEPTUAL
    ) else 8
    fmt = "R'G'B'A u16" if bits == 16 else "R'G'B'A u8"
    w, h = layer.get_width(), layer.get_height()
    buffer = layer.get_buffer()
    pixels = buffer.get(Gegl.Rectangle.new(0, 0, w, h), 1.0, fmt, Gegl.AbyssPolicy.CLAMP)
    Gimp.progress_init("Upscaling with pgp-wgpu…")
    try:
        out, ow, oh = pgp_wgpu_pixels.upscale_layer(
            pixels, w, h, bits, scale,
            # False once the user cancelled GIMP's progress: the run stops at the next unit.
            report=Gimp.progress_update,
        )
    except Exception as e:  # the engine's message reaches the user
        return procedure.new_return_values(
            Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(f"pgp-wgpu: {e}")
        )
    image.undo_group_start()
    image.scale(image.get_width() * scale, image.get_height() * scale)
    layer.scale(ow, oh, False)
    target = layer.get_buffer()
    target.set(Gegl.Rectangle.new(0, 0, ow, oh), fmt, out)
    target.flush()
    layer.update(0, 0, ow, oh)
    image.undo_group_end()
    Gimp.displays_flush()
    Gimp.progress_end()
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


class PgpWgpuUpscale(Gimp.PlugIn):
    def do_query_procedures(self):
        return [PROC]

    def do_create_procedure(self, name):
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run, None)
        procedure.set_image_types("RGB*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        procedure.set_menu_label("_Upscale (pgp-wgpu)…")
        procedure.add_menu_path("<Image>/Filters/Enhance")
        procedure.set_documentation(
            "Diffusion super-resolution with pgp-wgpu",
            "Upscales the active layer with a diffusion model on the GPU",
            name,
        )
        procedure.set_attribution("pgp-wgpu", "pgp-wgpu", "2026")
        procedure.add_int_argument("scale", "Scale", "Upscaling factor", 1, 8, 4,
                                   GObject.ParamFlags.READWRITE)
        return procedure


Gimp.main(PgpWgpuUpscale.__gtype__, sys.argv)
