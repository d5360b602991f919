"""The API's routes, one module per concern, each an `APIRouter` that declares who may call it
(service/access.py); service/app.py includes them all."""
