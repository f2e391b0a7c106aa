LISTEN toygres_instances; LISTEN toygres_actor_control; LISTEN toygres_actors_ping;
