"""The Riverdelta page inside the Airflow UI (an Airflow 3 plugin).

``fastapi_apps`` mounts the page's FastAPI app at ``/riverdelta`` on the API
server; ``external_views`` puts "Riverdelta" in the UI's navigation, embedding
that page (``url_route``: ``/plugin/riverdelta``). Airflow does not authenticate
a plugin's app: ``riverdelta.airflow.ui_app`` checks the login itself.

Plugins are loaded by every Airflow component: only the app factory is imported
here; the page's data (Kafka, Delta) is read inside its routes.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from riverdelta.airflow.ui_app import PREFIX, create_app


class RiverdeltaPlugin(AirflowPlugin):
    name = "riverdelta"
    fastapi_apps = [{"app": create_app(), "url_prefix": PREFIX, "name": "Riverdelta"}]
    external_views = [
        {
            "name": "Riverdelta",
            "href": f"{PREFIX}/",
            "url_route": "riverdelta",
            "destination": "nav",
            "icon": f"{PREFIX}/icon.svg",
        }
    ]
