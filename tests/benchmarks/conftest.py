from tests import comfy_host

comfy_host.import_comfy()  # before any test module imports comfy or the adapter
