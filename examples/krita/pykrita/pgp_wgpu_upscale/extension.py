"""The Krita glue: a menu action, a scale prompt, a progress dialog, a new document."""

from krita import Extension, Krita
from PyQt5.QtCore import QByteArray
from PyQt5.QtWidgets import QApplication, QInputDialog, QMessageBox, QProgressDialog

from . import pixels


class PgpWgpuUpscale(Extension):
    def setup(self):
        pass

    def createActions(self, window):
        action = window.createAction("pgp_wgpu_upscale", "Upscale (pgp-wgpu)…", "tools/scripts")
        action.triggered.connect(self.upscale)

    def upscale(self):
        app = Krita.instance()
        doc = app.activeDocument()
        if doc is None:
            return
        if doc.colorModel() != "RGBA" or doc.colorDepth() not in ("U8", "U16"):
            QMessageBox.warning(None, "pgp-wgpu", "Upscale needs an RGBA document of 8 or 16 bits.")
            return
        scale, ok = QInputDialog.getInt(None, "pgp-wgpu", "Scale", 4, 1, 8)
        if not ok:
            return
        w, h = doc.width(), doc.height()
        data = bytes(doc.pixelData(0, 0, w, h))  # the flattened image, BGRA
        dialog = QProgressDialog("Upscaling with pgp-wgpu…", "Cancel", 0, 100)
        dialog.setMinimumDuration(0)

        def progress(done, total):
            dialog.setMaximum(total)
            dialog.setValue(done)
            QApplication.processEvents()

        try:
            out, ow, oh = pixels.upscale_bgra(
                data, w, h, doc.colorDepth(), scale,
                progress=progress, cancelled=dialog.wasCanceled,
            )
        except Exception as e:  # the engine's message reaches the user (Cancelled included)
            dialog.close()
            if not dialog.wasCanceled():
                QMessageBox.critical(None, "pgp-wgpu", str(e))
            return
        dialog.close()
        new = app.createDocument(ow, oh, doc.name() + " ×%d" % scale, "RGBA", doc.colorDepth(),
                                 doc.colorProfile(), doc.resolution() * scale)
        layer = new.rootNode().childNodes()[0]
        layer.setPixelData(QByteArray(out), 0, 0, ow, oh)
        new.refreshProjection()
        app.activeWindow().addView(new)
