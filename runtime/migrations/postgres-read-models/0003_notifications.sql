-- The notification log of each projection: the newest notifications (bounded by the hub's
-- history), written in the commit that changed the documents, so a client resumes from its
-- last position across a restart of the dashboard. `notify_states` names the log's epoch and
-- the checkpoint it was written up to (a read model that moved without it starts a new epoch).
CREATE TABLE {schema}.notify_states (
    projection text   PRIMARY KEY,
    epoch      text   NOT NULL,
    position   bigint NOT NULL,
    checkpoint bigint NOT NULL
);

CREATE TABLE {schema}.notifications (
    projection text   NOT NULL,
    position   bigint NOT NULL,
    note       text   NOT NULL,
    document   text,
    PRIMARY KEY (projection, position)
);
